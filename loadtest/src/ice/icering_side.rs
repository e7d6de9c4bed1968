//! icering's side of the load (on the shards, through the public API).

use super::{Args, Counts, Load, Setup};

pub struct Pairs;
pub struct Serve;

impl Pairs {
    pub fn new(_: &Args) -> Result<Self, String> {
        Err("icering pairs: waiting for the agent API".into())
    }
}
impl Serve {
    pub fn new(_: &Args) -> Result<Self, String> {
        Err("icering serve: waiting for the agent API".into())
    }
}
macro_rules! unfinished {
    ($t:ty) => {
        impl Load for $t {
            fn connect(&mut self, _: usize, _: &Counts) -> Setup {
                unreachable!()
            }
            fn alive(&mut self) -> u64 {
                0
            }
            fn agents_per_connection(&self) -> u64 {
                1
            }
            fn close(&mut self) {}
        }
    };
}
unfinished!(Pairs);
unfinished!(Serve);
