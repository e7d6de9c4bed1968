//! `icering-loadtest`: load generator (see issue 3). Placeholder entry point until the
//! `stun` subcommand lands.
fn main() {
    eprintln!("icering-loadtest: no subcommand implemented yet");
    std::process::exit(2);
}
