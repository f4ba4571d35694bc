//! A max-aggregate segment tree over nodes: each subtree knows the most any one of its nodes has
//! free (whole GPUs, largest GPU share, CPU, memory) and which models it holds, so a first-fit
//! search skips every subtree that cannot hold the request. One search costs O(log n) when the
//! request fits early, instead of a scan of all nodes.

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Capacity {
    pub full_gpus: u8,
    pub max_gpu_milli: u16,
    pub cpu_milli: u64,
    pub memory_mib: u64,
    pub models: u64,
}

impl Capacity {
    fn max(self, o: Capacity) -> Capacity {
        Capacity {
            full_gpus: self.full_gpus.max(o.full_gpus),
            max_gpu_milli: self.max_gpu_milli.max(o.max_gpu_milli),
            cpu_milli: self.cpu_milli.max(o.cpu_milli),
            memory_mib: self.memory_mib.max(o.memory_mib),
            models: self.models | o.models,
        }
    }
}

/// What a subtree must at least offer for a search to enter it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Need {
    pub full_gpus: u8,
    pub gpu_milli: u16,
    pub cpu_milli: u64,
    pub memory_mib: u64,
    pub models: u64,
}

impl Need {
    fn admits(&self, c: &Capacity) -> bool {
        c.full_gpus >= self.full_gpus
            && c.max_gpu_milli >= self.gpu_milli
            && c.cpu_milli >= self.cpu_milli
            && c.memory_mib >= self.memory_mib
            && c.models & self.models != 0
    }
}

#[derive(Clone, Debug)]
pub(crate) struct CapacityTree {
    leaves: usize,
    nodes: Vec<Capacity>,
}

impl CapacityTree {
    pub fn new(caps: &[Capacity]) -> Self {
        let leaves = caps.len().next_power_of_two().max(1);
        let mut nodes = vec![Capacity::default(); 2 * leaves];
        nodes[leaves..leaves + caps.len()].copy_from_slice(caps);
        for i in (1..leaves).rev() {
            nodes[i] = nodes[2 * i].max(nodes[2 * i + 1]);
        }
        CapacityTree { leaves, nodes }
    }

    pub fn get(&self, i: usize) -> Capacity {
        self.nodes[self.leaves + i]
    }

    pub fn set(&mut self, i: usize, cap: Capacity) {
        let mut p = self.leaves + i;
        if self.nodes[p] == cap {
            return;
        }
        self.nodes[p] = cap;
        while p > 1 {
            p /= 2;
            let merged = self.nodes[2 * p].max(self.nodes[2 * p + 1]);
            if self.nodes[p] == merged {
                break;
            }
            self.nodes[p] = merged;
        }
    }

    /// The leftmost leaf at index `>= from` whose subtree passes `need` and that `exact` accepts.
    pub fn find_first(&self, from: usize, need: &Need, exact: &mut impl FnMut(usize) -> bool) -> Option<usize> {
        if from >= self.leaves {
            return None;
        }
        self.descend(1, 0, self.leaves, from, need, exact)
    }

    fn descend(
        &self,
        p: usize,
        lo: usize,
        hi: usize,
        from: usize,
        need: &Need,
        exact: &mut impl FnMut(usize) -> bool,
    ) -> Option<usize> {
        if hi <= from || !need.admits(&self.nodes[p]) {
            return None;
        }
        if hi - lo == 1 {
            return if exact(lo) { Some(lo) } else { None };
        }
        let mid = (lo + hi) / 2;
        self.descend(2 * p, lo, mid, from, need, exact).or_else(|| self.descend(2 * p + 1, mid, hi, from, need, exact))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cap(full: u8, cpu: u64) -> Capacity {
        Capacity {
            full_gpus: full,
            max_gpu_milli: if full > 0 { 1000 } else { 0 },
            cpu_milli: cpu,
            memory_mib: 1,
            models: 1,
        }
    }

    #[test]
    fn finds_leftmost_fitting_leaf_and_tracks_updates() {
        let mut t = CapacityTree::new(&[cap(0, 10), cap(2, 1), cap(4, 10), cap(8, 10), cap(1, 10)]);
        let need = Need { full_gpus: 2, gpu_milli: 0, cpu_milli: 5, memory_mib: 0, models: 1 };
        assert_eq!(t.find_first(0, &need, &mut |_| true), Some(2));
        assert_eq!(t.find_first(3, &need, &mut |_| true), Some(3));
        assert_eq!(t.find_first(0, &need, &mut |i| i != 2), Some(3));
        t.set(2, cap(0, 10));
        t.set(3, cap(1, 10));
        assert_eq!(t.find_first(0, &need, &mut |_| true), None);
        t.set(4, cap(2, 10));
        assert_eq!(t.find_first(0, &need, &mut |_| true), Some(4));
        let other_model = Need { models: 2, ..need };
        assert_eq!(t.find_first(0, &other_model, &mut |_| true), None);
    }
}
