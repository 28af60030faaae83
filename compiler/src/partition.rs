//! Stage partitioning: split decoder layers into contiguous pipeline stages by dynamic programming,
//! minimizing the slowest stage's time while every stage fits in memory.

/// Time and memory of a candidate stage.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StageCost {
    /// Forward + backward seconds of one micro-batch.
    pub time_s: f64,
    /// Peak bytes on the stage's devices.
    pub memory_bytes: f64,
}

/// Splits `layers` layers into `stages` contiguous, non-empty ranges (inclusive bounds).
///
/// `cost(stage, lo, hi)` gives the cost of stage `stage` holding layers `lo..=hi` (the first stage also
/// holds the embedding and the last the head, which `cost` accounts for). Among splits whose every stage
/// fits in `memory_cap`, the one with the smallest slowest-stage time wins (ties: smallest largest
/// memory, then earliest split points). If none fits, the split with the smallest largest memory is
/// returned, so the caller's memory check rejects it with the best available numbers.
pub fn partition(
    layers: u32,
    stages: u32,
    memory_cap: f64,
    cost: &dyn Fn(u32, u32, u32) -> StageCost,
) -> Vec<(u32, u32)> {
    let (l, s) = (layers as usize, stages as usize);
    if s <= 1 || l == 0 {
        return vec![(0, layers.saturating_sub(1))];
    }
    let s = s.min(l);
    // best[k][j]: best (key) for the first j layers in k stages; key = (feasible-first objective).
    #[derive(Clone, Copy)]
    struct Cell {
        max_time: f64,
        max_mem: f64,
        prev: usize,
    }
    let better = |a: &Cell, b: &Cell, fits_a: bool, fits_b: bool| -> bool {
        match (fits_a, fits_b) {
            (true, false) => true,
            (false, true) => false,
            (true, true) => (a.max_time, a.max_mem) < (b.max_time, b.max_mem),
            (false, false) => (a.max_mem, a.max_time) < (b.max_mem, b.max_time),
        }
    };
    let mut best: Vec<Vec<Option<Cell>>> = vec![vec![None; l + 1]; s + 1];
    best[0][0] = Some(Cell {
        max_time: 0.0,
        max_mem: 0.0,
        prev: 0,
    });
    for k in 1..=s {
        // Stage k-1 holds layers i..j-1; leave at least one layer per remaining stage.
        for j in k..=(l - (s - k)) {
            let mut cur: Option<Cell> = None;
            for (i, prev) in best[k - 1].iter().enumerate().take(j).skip(k - 1) {
                let Some(p) = *prev else { continue };
                let c = cost((k - 1) as u32, i as u32, (j - 1) as u32);
                let cand = Cell {
                    max_time: p.max_time.max(c.time_s),
                    max_mem: p.max_mem.max(c.memory_bytes),
                    prev: i,
                };
                let fits = cand.max_mem <= memory_cap;
                cur = match cur {
                    None => Some(cand),
                    Some(o) if better(&cand, &o, fits, o.max_mem <= memory_cap) => Some(cand),
                    keep => keep,
                };
            }
            best[k][j] = cur;
        }
    }
    let mut ranges = Vec::with_capacity(s);
    let mut j = l;
    for k in (1..=s).rev() {
        let cell = best[k][j].expect("every prefix with enough layers has a split");
        ranges.push((cell.prev as u32, (j - 1) as u32));
        j = cell.prev;
    }
    ranges.reverse();
    ranges
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uniform(
        extra_first: f64,
        extra_last: f64,
        layers: u32,
    ) -> impl Fn(u32, u32, u32) -> StageCost {
        move |_s, lo, hi| {
            let mut t = (hi - lo + 1) as f64;
            if lo == 0 {
                t += extra_first;
            }
            if hi == layers - 1 {
                t += extra_last;
            }
            StageCost {
                time_s: t,
                memory_bytes: t,
            }
        }
    }

    #[test]
    fn even_layers_split_evenly() {
        let p = partition(40, 4, f64::INFINITY, &uniform(0.0, 0.0, 40));
        assert_eq!(p, vec![(0, 9), (10, 19), (20, 29), (30, 39)]);
    }

    #[test]
    fn heavy_head_gets_fewer_layers() {
        let p = partition(40, 2, f64::INFINITY, &uniform(0.0, 4.0, 40));
        assert_eq!(
            p,
            vec![(0, 21), (22, 39)],
            "the head costs 4 layers: 22 + 18+4"
        );
    }

    #[test]
    fn every_layer_is_covered_once() {
        for stages in 1..=8 {
            let p = partition(13, stages, f64::INFINITY, &uniform(1.5, 2.5, 13));
            assert_eq!(p.first().unwrap().0, 0);
            assert_eq!(p.last().unwrap().1, 12);
            for w in p.windows(2) {
                assert_eq!(w[0].1 + 1, w[1].0);
            }
        }
    }

    #[test]
    fn memory_cap_moves_layers() {
        // Stage 0 holds more in-flight micro-batches: its memory per layer is doubled.
        let cost = |s: u32, lo: u32, hi: u32| {
            let n = (hi - lo + 1) as f64;
            StageCost {
                time_s: n,
                memory_bytes: if s == 0 { 2.0 * n } else { n },
            }
        };
        // Unconstrained, 6 + 6 is fastest; a cap of 10 bytes allows stage 0 at most 5 layers.
        assert_eq!(partition(12, 2, 14.0, &cost), vec![(0, 5), (6, 11)]);
        assert_eq!(
            partition(12, 2, 10.0, &cost),
            vec![(0, 4), (5, 11)],
            "stage 0 is capped at 5 layers"
        );
    }
}
