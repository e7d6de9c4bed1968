//! The check list (RFC 8445 §6.1.2): pairs, freezing by foundation (§6.1.2.6), the
//! triggered-check queue (§6.1.4.1) and the choice of the next check (§6.1.4.2).

use std::collections::VecDeque;

use super::pair::{Pair, PairState};

#[derive(Debug, Default)]
pub(crate) struct CheckList {
    pub pairs: Vec<Pair>,
    pub triggered: VecDeque<u16>,
}

impl CheckList {
    pub(crate) fn clear(&mut self) {
        self.pairs.clear();
        self.triggered.clear();
    }

    pub(crate) fn find(&self, local: u16, remote: u16) -> Option<usize> {
        self.pairs
            .iter()
            .position(|p| p.local == local && p.remote == remote)
    }

    /// Adds a pair (or returns the existing one with the same candidates, which is the
    /// redundancy pruning of §6.1.2.4 once srflx candidates are replaced by their base).
    /// New pairs start Waiting unless a live pair of the same foundation exists
    /// (§6.1.2.6, RFC 8838 §11). `None` when `max` pairs exist.
    pub(crate) fn add(&mut self, mut pair: Pair, max: usize) -> Option<usize> {
        if let Some(i) = self.find(pair.local, pair.remote) {
            return Some(i);
        }
        if self.pairs.len() >= max {
            return None;
        }
        let sibling = self
            .pairs
            .iter()
            .any(|p| p.foundation == pair.foundation && p.state != PairState::Failed);
        pair.state = if sibling {
            PairState::Frozen
        } else {
            PairState::Waiting
        };
        self.pairs.reserve_exact(1);
        self.pairs.push(pair);
        Some(self.pairs.len() - 1)
    }

    /// Queues a triggered check (§7.3.1.4): the pair becomes Waiting and is checked before
    /// any ordinary check.
    pub(crate) fn trigger(&mut self, i: usize, front: bool) {
        let p = &mut self.pairs[i];
        if matches!(p.state, PairState::Frozen | PairState::Failed) {
            p.state = PairState::Waiting;
        }
        let i = i as u16;
        if !self.triggered.contains(&i) {
            if front {
                self.triggered.push_front(i);
            } else {
                self.triggered.push_back(i);
            }
        }
    }

    /// §7.2.5.3.3: a success unfreezes the pairs of the same foundation.
    pub(crate) fn unfreeze_foundation(&mut self, foundation: u64) {
        for p in &mut self.pairs {
            if p.foundation == foundation && p.state == PairState::Frozen {
                p.state = PairState::Waiting;
            }
        }
    }

    /// The next pair to check, per §6.1.4.2: a triggered check, else the highest-priority
    /// Waiting pair, else unfreeze the best Frozen pair of a foundation with nothing
    /// Waiting or In-Progress.
    pub(crate) fn next_check(&mut self) -> Option<usize> {
        while let Some(i) = self.triggered.pop_front() {
            let i = usize::from(i);
            if i < self.pairs.len() {
                return Some(i);
            }
        }
        let best = |pairs: &[Pair], want: &dyn Fn(&Pair) -> bool| {
            pairs
                .iter()
                .enumerate()
                .filter(|(_, p)| want(p))
                .max_by_key(|(_, p)| p.priority)
                .map(|(i, _)| i)
        };
        if let Some(i) = best(&self.pairs, &|p| p.state == PairState::Waiting) {
            return Some(i);
        }
        let pairs = &self.pairs;
        let busy = |f: u64| {
            pairs.iter().any(|p| {
                p.foundation == f && matches!(p.state, PairState::Waiting | PairState::InProgress)
            })
        };
        let i = best(pairs, &|p| {
            p.state == PairState::Frozen && !busy(p.foundation)
        })?;
        self.pairs[i].state = PairState::Waiting;
        Some(i)
    }

    /// Whether [`next_check`](Self::next_check) would return a pair now.
    pub(crate) fn can_start(&self) -> bool {
        if !self.triggered.is_empty() {
            return true;
        }
        let busy = |f: u64| {
            self.pairs.iter().any(|p| {
                p.foundation == f && matches!(p.state, PairState::Waiting | PairState::InProgress)
            })
        };
        self.pairs.iter().any(|p| {
            p.state == PairState::Waiting || (p.state == PairState::Frozen && !busy(p.foundation))
        })
    }

    /// Whether any check is still to be started.
    pub(crate) fn has_work(&self) -> bool {
        !self.triggered.is_empty()
            || self
                .pairs
                .iter()
                .any(|p| matches!(p.state, PairState::Waiting | PairState::Frozen))
    }

    /// Whether any pair could still succeed.
    pub(crate) fn all_failed(&self) -> bool {
        self.triggered.is_empty() && self.pairs.iter().all(|p| p.state == PairState::Failed)
    }

    /// The highest-priority valid (Succeeded) pair.
    pub(crate) fn best_valid(&self) -> Option<usize> {
        self.best_valid_except(None)
    }

    /// The highest-priority valid pair other than `skip`.
    pub(crate) fn best_valid_except(&self, skip: Option<usize>) -> Option<usize> {
        self.pairs
            .iter()
            .enumerate()
            .filter(|&(i, p)| p.state == PairState::Succeeded && Some(i) != skip)
            .max_by_key(|(_, p)| p.priority)
            .map(|(i, _)| i)
    }

    /// Whether a pair of higher priority than `than` may still succeed.
    pub(crate) fn better_pending(&self, than: u64) -> bool {
        self.pairs.iter().any(|p| {
            p.priority > than
                && matches!(
                    p.state,
                    PairState::Frozen | PairState::Waiting | PairState::InProgress
                )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freezing_and_triggered_order() {
        let mut cl = CheckList::default();
        let a = cl.add(Pair::new(0, 0, 10, 1), 10).unwrap();
        let b = cl.add(Pair::new(0, 1, 20, 1), 10).unwrap();
        let c = cl.add(Pair::new(1, 1, 5, 2), 10).unwrap();
        assert_eq!(cl.pairs[a].state, PairState::Waiting);
        assert_eq!(cl.pairs[b].state, PairState::Frozen);
        assert_eq!(cl.pairs[c].state, PairState::Waiting);
        assert_eq!(cl.add(Pair::new(0, 0, 10, 1), 10), Some(a));
        cl.trigger(c, false);
        assert_eq!(cl.next_check(), Some(c));
        assert_eq!(cl.next_check(), Some(a));
        cl.pairs[a].state = PairState::InProgress;
        cl.pairs[c].state = PairState::InProgress;
        // Only b is left, frozen behind a (same foundation, in progress).
        assert_eq!(cl.next_check(), None);
        cl.pairs[a].state = PairState::Failed;
        assert_eq!(cl.next_check(), Some(b));
        assert!(cl.add(Pair::new(5, 5, 1, 9), 3).is_none());
    }
}
