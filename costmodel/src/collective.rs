//! Collectives under an α-β model per link class: ring and tree all-reduce, reduce-scatter,
//! all-gather, point-to-point; hierarchical (inside a server, then across servers); and the exposed
//! part of a data-parallel gradient sync that overlaps with backward.
//!
//! `bytes` is always the full buffer: the all-reduced buffer, the reduce-scatter input, the all-gather
//! output.

use crate::cluster::{Cluster, Link};
use serde::{Deserialize, Serialize};

/// A collective operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Collective {
    /// Sum over the group, result everywhere.
    AllReduce,
    /// Sum over the group, each member keeps 1/n.
    ReduceScatter,
    /// Each member contributes 1/n, everyone gets the whole.
    AllGather,
    /// One send/receive between two devices.
    PointToPoint,
}

/// Ring all-reduce: `2(n-1)` steps of `bytes/n`.
pub fn ring_all_reduce(bytes: f64, n: u32, link: &Link, bw: f64) -> f64 {
    if n <= 1 {
        return 0.0;
    }
    let n = n as f64;
    2.0 * (n - 1.0) * link.latency_s + 2.0 * (n - 1.0) / n * bytes / bw
}

/// Tree all-reduce (pipelined double binary tree): `2⌈log2 n⌉` latencies, the buffer twice.
pub fn tree_all_reduce(bytes: f64, n: u32, link: &Link, bw: f64) -> f64 {
    if n <= 1 {
        return 0.0;
    }
    let depth = (n as f64).log2().ceil();
    2.0 * depth * link.latency_s + 2.0 * bytes / bw
}

/// Ring reduce-scatter or all-gather: `n-1` steps of `bytes/n`.
pub fn ring_half(bytes: f64, n: u32, link: &Link, bw: f64) -> f64 {
    if n <= 1 {
        return 0.0;
    }
    let n = n as f64;
    (n - 1.0) * link.latency_s + (n - 1.0) / n * bytes / bw
}

/// Point-to-point send of `bytes`.
pub fn point_to_point(bytes: f64, link: &Link) -> f64 {
    link.latency_s + bytes / link.effective_bytes_per_s(2)
}

/// One flat level: the faster of ring and tree for all-reduce.
fn flat(kind: Collective, bytes: f64, n: u32, link: &Link) -> f64 {
    let bw = link.effective_bytes_per_s(n);
    match kind {
        Collective::AllReduce => {
            ring_all_reduce(bytes, n, link, bw).min(tree_all_reduce(bytes, n, link, bw))
        }
        Collective::ReduceScatter | Collective::AllGather => ring_half(bytes, n, link, bw),
        Collective::PointToPoint => point_to_point(bytes, link),
    }
}

/// Time of a collective over a group of `size` ranks spaced `stride` apart (ranks are numbered
/// server by server). Inside one server it is flat over the server link (the pair link for the two
/// devices of one package); across servers it is hierarchical: reduce-scatter inside each server,
/// the operation across servers on `1/g` of the buffer with all `g` members' network links in
/// parallel, then all-gather inside.
pub fn collective_time(
    cluster: &Cluster,
    kind: Collective,
    bytes: f64,
    size: u32,
    stride: u32,
) -> f64 {
    if size <= 1 || bytes <= 0.0 {
        return 0.0;
    }
    let (servers, per) = cluster.group_layout(size, stride);
    let intra_link = if per == 2 && stride == 1 {
        &cluster.links.pair
    } else {
        &cluster.links.server
    };
    if kind == Collective::PointToPoint {
        let link = if servers > 1 {
            &cluster.links.network
        } else {
            intra_link
        };
        return point_to_point(bytes, link);
    }
    if servers <= 1 {
        return flat(kind, bytes, size, intra_link);
    }
    let net = &cluster.links.network;
    if per <= 1 {
        return flat(kind, bytes, servers, net);
    }
    let shard = bytes / per as f64;
    match kind {
        Collective::AllReduce => {
            flat(Collective::ReduceScatter, bytes, per, intra_link)
                + flat(Collective::AllReduce, shard, servers, net)
                + flat(Collective::AllGather, bytes, per, intra_link)
        }
        Collective::ReduceScatter => {
            flat(Collective::ReduceScatter, bytes, per, intra_link)
                + flat(Collective::ReduceScatter, shard, servers, net)
        }
        Collective::AllGather => {
            flat(Collective::AllGather, shard, servers, net)
                + flat(Collective::AllGather, bytes, per, intra_link)
        }
        Collective::PointToPoint => point_to_point(bytes, net),
    }
}

/// Exposed part of a gradient sync of duration `sync_s` that may overlap with `backward_s` of
/// backward compute (bucketed, as DDP and Megatron's `--overlap-grad-reduce` do): the last of
/// `buckets` buckets cannot overlap, and whatever does not fit under backward is exposed.
pub fn exposed_after_overlap(sync_s: f64, backward_s: f64, buckets: u32) -> f64 {
    let last = sync_s / buckets.max(1) as f64;
    (sync_s - backward_s).max(0.0).max(last)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::Gpu;

    #[test]
    fn ring_matches_formula() {
        let l = Link::new(100e9, 1e-5);
        let t = ring_all_reduce(1e9, 4, &l, 100e9);
        assert!((t - (6.0 * 1e-5 + 1.5 * 1e9 / 100e9)).abs() < 1e-12);
        assert_eq!(ring_all_reduce(1e9, 1, &l, 1e9), 0.0);
    }

    #[test]
    fn tree_wins_for_small_messages_ring_for_large() {
        let l = Link::new(100e9, 1e-5);
        let bw = 100e9;
        assert!(tree_all_reduce(1e3, 64, &l, bw) < ring_all_reduce(1e3, 64, &l, bw));
        assert!(ring_all_reduce(1e10, 64, &l, bw) < tree_all_reduce(1e10, 64, &l, bw));
    }

    #[test]
    fn crossing_servers_is_slower() {
        let c = Cluster::new(Gpu::H100, 16).unwrap();
        let inside = collective_time(&c, Collective::AllReduce, 1e9, 8, 1);
        let across = collective_time(&c, Collective::AllReduce, 1e9, 16, 1);
        assert!(across > inside * 2.0, "{inside} {across}");
        let rs = collective_time(&c, Collective::ReduceScatter, 1e9, 16, 1);
        let ag = collective_time(&c, Collective::AllGather, 1e9, 16, 1);
        assert!(rs + ag <= across * 1.05 && rs + ag >= across * 0.5);
    }

    #[test]
    fn mi250_pair_uses_package_link() {
        let c = Cluster::new(Gpu::Mi250, 8).unwrap();
        let pair = collective_time(&c, Collective::AllReduce, 1e9, 2, 1);
        let spread = collective_time(&c, Collective::AllReduce, 1e9, 2, 2);
        assert!(pair * 3.0 < spread);
    }

    #[test]
    fn overlap() {
        assert_eq!(exposed_after_overlap(1.0, 10.0, 4), 0.25);
        assert_eq!(exposed_after_overlap(10.0, 4.0, 4), 6.0);
    }
}
