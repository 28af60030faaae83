//! Offload to host memory: the optimizer ([`optimizer_offload`]) and activations
//! ([`activation_offload`]).
//!
//! **Optimizer offload** (ZeRO-Offload style, `ParallelConfig.offload_optimizer`): the optimizer state and
//! fp32 master weights live in host memory, the optimizer step runs on the CPU, and every step moves the
//! gradients to the host and the updated 16-bit weights back over the device's host link.
//!
//! What changes in the cost model:
//! - **Device memory**: no optimizer state, master weights or optimizer temporaries
//!   ([`crate::memory::static_bytes`]); weights and gradient buffers stay.
//! - **Host memory**: per server, each device's optimizer shard (its `optimizer_bytes_per_param`, fp32
//!   master weights and moments) plus its fp32 gradient copy ([`HOST_GRAD_BYTES_PER_PARAM`]); a plan
//!   needing more than the server's host memory ([`HostSpec::memory_per_server_bytes`]) is refused.
//! - **Time** ([`optimizer_offload`]): gradients device → host (overlapped with backward as ZeRO-Offload
//!   does, bucket by bucket), the CPU Adam step as a memory-bound pass over the shard at the host's
//!   memory bandwidth shared by the server's devices ([`CPU_ADAM_BYTES_PER_PARAM`]), and the updated
//!   16-bit weights host → device before the next forward (not overlapped). It replaces the device's
//!   optimizer kernels and is reported as `Breakdown.offload_s` (part of `optimizer_s`).
//!
//! **Activation offload** (`ParallelConfig.offload_activations = N`, Megatron-LM's
//! `--cpu-offloading-num-layers N`, Transformer Engine's CPU offload context): the saved activations of
//! the first `N` decoder layers of each pipeline device are copied device → host during forward and
//! back host → device ahead of their backward, on a separate stream over the device's host link
//! (`link_bytes_per_s × LINK_EFFICIENCY`, each direction on its own half of the duplex link).
//! - **Time** ([`activation_offload`]), per micro-batch and offloaded layer: its copy out runs under
//!   the forward of the next block on the device, its copy back under the backward of that block
//!   (recomputation included); only the excess is exposed, and it is added to the stage's forward and
//!   backward times, so the pipeline schedule sees it. Reported in `Breakdown.offload_s`.
//! - **Device memory** ([`crate::memory::device_memory`]): the offloaded layers' activations leave the
//!   peak except an in-flight window of [`ACTIVATION_WINDOW_LAYERS`] layers (the one being copied out
//!   and the one being prefetched back). Transformer Engine stages through pinned *host* buffers, so
//!   no device staging buffer is added.
//! - **Host memory**: the offloaded bytes of every in-flight micro-batch (1F1B device `s` holds
//!   `pp − s` of them, [`crate::memory::in_flight`]) per device, times the server's devices, join the
//!   optimizer-offload bytes against [`HostSpec::memory_per_server_bytes`]. Megatron-LM's rank order
//!   puts pipeline stages outermost, so a server's devices hold the same stage whenever dp·tp·cp
//!   fills it; the check charges every device of the server with the stage being costed.
//! - What is offloaded is what the recomputation policy saves (with full recomputation, the layer
//!   inputs); context and tensor/sequence parallelism divide it as they divide the saved activations.
//!
//! Host figures per GPU kind are in [`host_spec`], with their sources or stated as assumptions. A
//! cluster file does not override them.

use crate::device::Gpu;

/// The host side of one server of a GPU kind.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HostSpec {
    /// Host link bandwidth per device per direction, bytes/s (PCIe x16 nominal).
    pub link_bytes_per_s: f64,
    /// Host memory per server, bytes.
    pub memory_per_server_bytes: u64,
    /// Host memory bandwidth per server (all sockets), bytes/s.
    pub memory_bytes_per_s: f64,
    /// Where the figures come from.
    pub source: &'static str,
}

/// Fraction of the nominal PCIe bandwidth a pinned-memory copy reaches (about 25 of 32 GB/s on PCIe4
/// x16, 50 of 64 on PCIe5: the usual `bandwidthTest` figures). Assumption.
pub const LINK_EFFICIENCY: f64 = 0.8;

/// Fraction of the host's peak DRAM bandwidth a vectorized CPU Adam (DeepSpeed's `DeepSpeedCPUAdam`,
/// AVX-512) streams at, as STREAM-like kernels reach on two-socket servers. Assumption.
pub const HOST_MEMORY_EFFICIENCY: f64 = 0.7;

/// Bytes of host memory traffic per parameter of one CPU Adam step: read the fp32 gradient, master
/// weight and two moments (16), write the master weight and moments (12) and the 16-bit copy sent back
/// to the device (2).
pub const CPU_ADAM_BYTES_PER_PARAM: f64 = 30.0;

/// fp32 gradient bytes per parameter held on the host (the copy CPU Adam reads).
pub const HOST_GRAD_BYTES_PER_PARAM: f64 = 4.0;

/// Bytes per parameter of the updated weights copied back to the device (bf16).
pub const WEIGHT_UPLOAD_BYTES_PER_PARAM: f64 = 2.0;

/// The host side of a server of `gpu`: PCIe generation of the device's host link, host memory and
/// memory bandwidth of the vendor's 8-GPU reference server (two sockets unless said otherwise).
pub fn host_spec(gpu: Gpu) -> HostSpec {
    const GIB: u64 = 1 << 30;
    match gpu {
        Gpu::A100 => HostSpec {
            link_bytes_per_s: 32e9,
            memory_per_server_bytes: 1024 * GIB,
            memory_bytes_per_s: 409.6e9,
            source: "NVIDIA DGX A100 datasheet: 1 TB system memory, 2x AMD EPYC 7742 (8 channels DDR4-3200 each: 2 x 204.8 GB/s); PCIe4 x16",
        },
        Gpu::H100 | Gpu::H200 | Gpu::H100Hbm2e => HostSpec {
            link_bytes_per_s: 64e9,
            memory_per_server_bytes: 2048 * GIB,
            memory_bytes_per_s: 614.4e9,
            source: "NVIDIA DGX H100/H200 datasheets: 2 TB system memory, 2x Intel Xeon Platinum 8480C (8 channels DDR5-4800 each: 2 x 307.2 GB/s); PCIe5 x16 (assumed the same for Grand Teton's HBM2e H100 servers: no published host figures)",
        },
        Gpu::B200 => HostSpec {
            link_bytes_per_s: 64e9,
            memory_per_server_bytes: 2048 * GIB,
            memory_bytes_per_s: 716.8e9,
            source: "NVIDIA DGX B200 datasheet: 2 TB system memory (up to 4 TB), 2x Intel Xeon Platinum 8570 (8 channels DDR5-5600 each: 2 x 358.4 GB/s); PCIe5 x16 to the host",
        },
        Gpu::Mi300x | Gpu::Mi325x | Gpu::Mi355x => HostSpec {
            link_bytes_per_s: 64e9,
            memory_per_server_bytes: 2048 * GIB,
            memory_bytes_per_s: 921.6e9,
            source: "assumption (stated default): an 8-GPU OAM server with 2 TB and 2x AMD EPYC 9004 (12 channels DDR5-4800 each: 2 x 460.8 GB/s); PCIe5 x16 per GPU (AMD datasheets)",
        },
        Gpu::Mi250 | Gpu::Mi250x => HostSpec {
            link_bytes_per_s: 32e9,
            memory_per_server_bytes: 512 * GIB,
            memory_bytes_per_s: 204.8e9,
            source: "LUMI-G node (4 MI250X = 8 GCDs): 512 GiB DDR4, 1x AMD EPYC 7A53 (8 channels DDR4-3200: 204.8 GB/s) (LUMI documentation); PCIe4 x16 per GCD (ROCm docs)",
        },
        Gpu::Mi210 => HostSpec {
            link_bytes_per_s: 32e9,
            memory_per_server_bytes: 1024 * GIB,
            memory_bytes_per_s: 409.6e9,
            source: "assumption (stated default): an 8-card PCIe server with 1 TB and 2x AMD EPYC 7003 (8 channels DDR4-3200 each); PCIe4 x16 (AMD MI210 datasheet)",
        },
    }
}

/// Seconds of one step's optimizer offload on one device.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct OffloadTimes {
    /// Gradients device → host, before overlap with backward.
    pub download_s: f64,
    /// The CPU optimizer step over the device's shard.
    pub cpu_step_s: f64,
    /// Updated 16-bit weights host → device.
    pub upload_s: f64,
}

/// The offload times of a device whose optimizer shard holds `shard_params` parameters and whose
/// gradients are `grad_bytes` bytes, on a server of `devices_per_server` devices of `gpu` (they share
/// the host's memory bandwidth).
pub fn optimizer_offload(
    gpu: Gpu,
    devices_per_server: u32,
    shard_params: f64,
    grad_bytes: f64,
) -> OffloadTimes {
    let h = host_spec(gpu);
    let link = h.link_bytes_per_s * LINK_EFFICIENCY;
    let host_bw = h.memory_bytes_per_s * HOST_MEMORY_EFFICIENCY / devices_per_server.max(1) as f64;
    OffloadTimes {
        download_s: grad_bytes / link,
        cpu_step_s: shard_params * CPU_ADAM_BYTES_PER_PARAM / host_bw,
        upload_s: shard_params * WEIGHT_UPLOAD_BYTES_PER_PARAM / link,
    }
}

/// Host bytes one device's offloaded shard needs: its optimizer state (`optimizer_bytes_per_param`,
/// master weights included under amp-bf16) and the fp32 gradient copy.
pub fn host_bytes_per_device(shard_params: f64, optimizer_bytes_per_param: f64) -> f64 {
    shard_params * (optimizer_bytes_per_param.max(0.0) + HOST_GRAD_BYTES_PER_PARAM)
}

/// Offloaded layers whose activations are on the device at once beside the layers kept there: one
/// being copied out (until the next layer's forward ends) and one prefetched back (during the backward
/// of the layer after it). Transformer Engine's offload handler prefetches one group ahead.
pub const ACTIVATION_WINDOW_LAYERS: f64 = 2.0;

/// One offloaded decoder layer of one device, per micro-batch.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct OffloadedLayer {
    /// Saved activation bytes copied out and back.
    pub bytes: f64,
    /// Forward seconds of the compute its copy out runs under (the next block on the device; 0 when
    /// the layer is the device's last block).
    pub forward_cover_s: f64,
    /// Backward seconds of the compute its copy back runs under (the same next block's backward,
    /// recomputation included).
    pub backward_cover_s: f64,
}

/// Seconds of one micro-batch's activation offload on one device.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ActivationOffloadTimes {
    /// All copies out (device → host), before overlap.
    pub download_s: f64,
    /// All copies back (host → device), before overlap.
    pub upload_s: f64,
    /// What the forward's compute does not hide.
    pub forward_exposed_s: f64,
    /// What the backward's compute does not hide.
    pub backward_exposed_s: f64,
}

/// The activation offload times of one micro-batch on a device of `gpu` whose offloaded layers are
/// `layers`: each layer's copy takes `bytes / (link × LINK_EFFICIENCY)` each way and is exposed by
/// what exceeds its cover.
pub fn activation_offload(gpu: Gpu, layers: &[OffloadedLayer]) -> ActivationOffloadTimes {
    let link = host_spec(gpu).link_bytes_per_s * LINK_EFFICIENCY;
    let mut t = ActivationOffloadTimes::default();
    for l in layers {
        let x = l.bytes.max(0.0) / link;
        t.download_s += x;
        t.upload_s += x;
        t.forward_exposed_s += (x - l.forward_cover_s.max(0.0)).max(0.0);
        t.backward_exposed_s += (x - l.backward_cover_s.max(0.0)).max(0.0);
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_a_host_with_a_source() {
        for g in Gpu::ALL {
            let h = host_spec(g);
            assert!(h.link_bytes_per_s >= 32e9 && h.memory_per_server_bytes >= 512 << 30);
            assert!(!h.source.is_empty());
        }
    }

    #[test]
    fn times_follow_bandwidths() {
        // 1e9 parameters per H100, 8 per server: CPU Adam at 0.7 x 614.4 GB/s / 8 = 53.8 GB/s.
        let t = optimizer_offload(Gpu::H100, 8, 1e9, 4e9);
        assert!((t.cpu_step_s - 30e9 / (0.7 * 614.4e9 / 8.0)).abs() < 1e-9);
        assert!((t.download_s - 4e9 / 51.2e9).abs() < 1e-12);
        assert!((t.upload_s - 2e9 / 51.2e9).abs() < 1e-12);
        assert_eq!(host_bytes_per_device(1e9, 12.0), 16e9);
    }

    #[test]
    fn activation_copies_are_exposed_only_beyond_their_cover() {
        // 5.12 GB per layer over 0.8 x 64 GB/s: 0.1 s each way.
        let layer = |f: f64, b: f64| OffloadedLayer {
            bytes: 5.12e9,
            forward_cover_s: f,
            backward_cover_s: b,
        };
        let hidden = activation_offload(Gpu::H100, &[layer(0.2, 0.4), layer(0.1, 0.3)]);
        assert!((hidden.download_s - 0.2).abs() < 1e-12);
        assert!((hidden.upload_s - 0.2).abs() < 1e-12);
        assert_eq!(hidden.forward_exposed_s, 0.0);
        assert_eq!(hidden.backward_exposed_s, 0.0);
        let slow = activation_offload(Gpu::H100, &[layer(0.025, 0.05)]);
        assert!((slow.forward_exposed_s - 0.075).abs() < 1e-12);
        assert!((slow.backward_exposed_s - 0.05).abs() < 1e-12);
        // PCIe4 hosts move the same bytes at half the rate.
        let a100 = activation_offload(Gpu::A100, &[layer(0.0, 0.0)]);
        assert!((a100.forward_exposed_s - 0.2).abs() < 1e-12);
    }
}
