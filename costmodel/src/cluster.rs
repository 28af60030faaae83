//! Links and clusters: how many devices, how they are grouped in servers, and the links between them.
//!
//! Defaults (per device, per direction):
//! - MI250: the two GCDs of one package share 4 Infinity Fabric links, 200 GB/s (`pair`). Across the
//!   4 packages of a server each GCD has single 50 GB/s links, but RCCL runs several rings at once
//!   over them: measured, an all-gather of 14 MiB per rank over the 8 GCDs of a LUMI-G node (4
//!   MI250X; Megatron-DeepSpeed's pipeline receivers gathering a 175B activation over the TP group)
//!   took a median 1.19 ms over 2,330 calls (DeepSpeed comms logger, spyysalo/lumi-llm-scaling
//!   `meg-ds/experiments/175B-scaling-comms/16-node.out` @7314958; ROCm 5.2.3): 86 GB/s of bus
//!   bandwidth. `server` is the link that reproduces it with this α-β model (5 µs per step,
//!   efficiency 0.8): 111 GB/s per direction.
//! - MI250X (one GCD): as MI250 (the same GCD pairs and node; LUMI-G and Frontier nodes are 4 MI250X
//!   with 4×200 Gb/s Slingshot-11, the network default below).
//! - MI210: one 50 GB/s Infinity Fabric link to a bridge neighbour (`pair`); an 8-card server is two
//!   4-card bridge hives joined over PCIe4 x16 (about 32 GB/s, `server`). Assumption: the data sheet
//!   gives only the links, not the server topology.
//! - MI300X: 7 Infinity Fabric links of 64 GB/s, fully connected 8-GPU node: a group of `g` devices
//!   uses `g-1` links each (`server` is a mesh link).
//! - H100 and H200: NVLink/NVSwitch 450 GB/s; A100: 300 GB/s; B200: NVLink 5, 900 GB/s (datasheets).
//! - MI325X: as MI300X (same package and links); MI355X: 7 Infinity Fabric links of 76.8 GB/s
//!   (1,075.2 GB/s aggregate bidirectional, AMD datasheet), fully connected.
//! - Between servers (documented assumption of DESIGN.md): 4×200 Gb/s per AMD server (12.5 GB/s per
//!   device of 8), 8×200 Gb/s InfiniBand per H100/H200/A100 server (25 GB/s per GPU). Assumption for
//!   the newer generation: one 400 Gb/s NIC per GPU (50 GB/s) for B200 (the DGX B200 datasheet's
//!   8× ConnectX-7 400 Gb/s) and MI355X (AMD's reference platform pairs each GPU with a 400 Gb/s NIC);
//!   MI325X keeps the MI300X default.
//!
//! Latencies (α) are assumptions from typical NCCL/RCCL measurements: 5 µs inside a server, 15 µs
//! between servers; achievable bus bandwidth is 80% of the link figure (`efficiency`). These α-β
//! figures cost the links without a measured curve (MI250, MI210, every network link). The server
//! links of H100 (`nvlink4-nvswitch`), A100 (`nvlink3-nvswitch`) and MI300X (`xgmi`) name their
//! `class` instead: collectives on them follow the measured NCCL/RCCL bus bandwidth by message size
//! of `data/collective_busbw.csv` ([`crate::collective::curve_busbw`]).
//!
//! A cluster file (JSON) overrides any of this:
//! ```json
//! {"gpu": "mi250", "devices": 32, "devices_per_server": 8,
//!  "memory_per_device_bytes": 68719476736,
//!  "links": {"pair":    {"bytes_per_s": 200e9, "latency_s": 5e-6, "efficiency": 0.8},
//!            "server":  {"bytes_per_s": 50e9,  "latency_s": 5e-6, "efficiency": 0.8, "mesh": false},
//!            "network": {"bytes_per_s": 12.5e9, "latency_s": 15e-6, "efficiency": 0.8}}}
//! ```
//! Every field but `gpu` and `devices` is optional; missing ones take the defaults above. A link given
//! in the file is costed by α-β unless it names a measured `class` (`"class": "nvlink4-nvswitch"`,
//! `"nvlink3-nvswitch"` or `"xgmi"`). Every field is
//! honoured (the file defines the whole cluster: kind, device count, server size, memory per device,
//! links) or rejected by name: an unknown field, a value out of range ([`CLUSTER_FILE_LIMITS`]: e.g. an
//! `efficiency` outside (0, 1]) or a `flavor` whose device count is not `devices` is an error naming it.

use crate::collective::LinkClass;
use crate::device::Gpu;
use crate::error::{CostError, Result};
use serde::{Deserialize, Serialize};

/// One class of link, per device and per direction.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Link {
    /// Bandwidth per device per direction, bytes/s (for a mesh: per peer link).
    pub bytes_per_s: f64,
    /// Latency of one message (α), seconds.
    pub latency_s: f64,
    /// Achievable fraction of the bandwidth for collectives.
    #[serde(default = "default_link_efficiency")]
    pub efficiency: f64,
    /// Fully connected mesh of per-peer links: a group of `g` devices uses `g-1` links each.
    #[serde(default)]
    pub mesh: bool,
    /// The measured link class whose bus-bandwidth curve costs collectives on this link
    /// ([`crate::collective::curve_busbw`]); without one, the α-β model of `bytes_per_s`,
    /// `latency_s` and `efficiency`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<LinkClass>,
}

fn default_link_efficiency() -> f64 {
    0.8
}

impl Link {
    /// A link with the default efficiency, not a mesh.
    pub const fn new(bytes_per_s: f64, latency_s: f64) -> Link {
        Link {
            bytes_per_s,
            latency_s,
            efficiency: 0.8,
            mesh: false,
            class: None,
        }
    }

    /// The same link, costed by the measured curve of `class`.
    pub const fn with_class(mut self, class: LinkClass) -> Link {
        self.class = Some(class);
        self
    }

    /// Effective bandwidth (bytes/s per device per direction) for a group of `group` devices.
    pub fn effective_bytes_per_s(&self, group: u32) -> f64 {
        let links = if self.mesh {
            group.saturating_sub(1).max(1) as f64
        } else {
            1.0
        };
        self.bytes_per_s * self.efficiency * links
    }
}

/// The three link classes of a cluster.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Links {
    /// Between the two closest devices (MI250: the two GCDs of one package); equal to `server` elsewhere.
    pub pair: Link,
    /// Inside a server, the bottleneck link of a ring (or a mesh link).
    pub server: Link,
    /// Between servers, the network bandwidth available to one device.
    pub network: Link,
}

impl Links {
    /// The documented defaults of a GPU kind (see the module docs).
    pub fn default_for(gpu: Gpu) -> Links {
        const INTRA: f64 = 5e-6;
        const INTER: f64 = 15e-6;
        let amd_net = Link::new(4.0 * 200e9 / 8.0 / 8.0, INTER);
        let ib_net = Link::new(8.0 * 200e9 / 8.0 / 8.0, INTER);
        let nic400 = Link::new(400e9 / 8.0, INTER);
        let fabric = |per_link: f64| {
            let mesh = Link {
                mesh: true,
                ..Link::new(per_link, INTRA)
            };
            (mesh, mesh)
        };
        match gpu {
            // `server`: fitted to the measured RCCL all-gather of a LUMI-G node (module docs).
            // MI250X: the same GCD pairs, node and Slingshot network (LUMI-G is an MI250X machine).
            Gpu::Mi250 | Gpu::Mi250x => Links {
                pair: Link::new(200e9, INTRA),
                server: Link::new(111e9, INTRA),
                network: amd_net,
            },
            Gpu::Mi210 => Links {
                pair: Link::new(50e9, INTRA),
                server: Link::new(32e9, INTRA),
                network: amd_net,
            },
            // MI325X: MI300X's Infinity Fabric (same links, same measured RCCL curves).
            Gpu::Mi300x | Gpu::Mi325x => {
                let (pair, server) = fabric(64e9);
                let (pair, server) = (
                    pair.with_class(LinkClass::Xgmi),
                    server.with_class(LinkClass::Xgmi),
                );
                Links {
                    pair,
                    server,
                    network: amd_net,
                }
            }
            Gpu::Mi355x => {
                let (pair, server) = fabric(76.8e9);
                Links {
                    pair,
                    server,
                    network: nic400,
                }
            }
            Gpu::B200 => {
                let nv = Link::new(900e9, INTRA);
                Links {
                    pair: nv,
                    server: nv,
                    network: nic400,
                }
            }
            // H200: H100's NVLink 4 / NVSwitch fabric (same links, same measured NCCL curves). The
            // HBM2e H100 of Meta's Grand Teton: 8 GPUs on NVLink 4 and 400 Gb/s RDMA per GPU
            // (torchtitan's benchmark hardware notes).
            Gpu::H100 | Gpu::H200 | Gpu::H100Hbm2e => {
                let nv = Link::new(450e9, INTRA).with_class(LinkClass::NvLink4NvSwitch);
                Links {
                    pair: nv,
                    server: nv,
                    network: ib_net,
                }
            }
            Gpu::A100 => {
                let nv = Link::new(300e9, INTRA).with_class(LinkClass::NvLink3NvSwitch);
                Links {
                    pair: nv,
                    server: nv,
                    network: ib_net,
                }
            }
        }
    }
}

/// Devices per server for every kind moai knows (8 GCDs = 4 MI250; 8 MI210; 8 MI300X, MI325X or
/// MI355X; 8 H100, H200, B200 or A100).
pub const DEVICES_PER_SERVER: u32 = 8;

/// A set of identical devices in servers, with its links.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Cluster {
    /// GPU kind.
    pub gpu: Gpu,
    /// Number of devices (MI250: GCDs).
    pub devices: u32,
    /// Devices in one server.
    pub devices_per_server: u32,
    /// Number of servers (the last may be partly used).
    pub servers: u32,
    /// The flavor this cluster came from, if any.
    pub flavor: Option<String>,
    /// Memory of one device, bytes.
    pub memory_per_device_bytes: u64,
    /// Links.
    pub links: Links,
}

impl Cluster {
    /// `devices` devices of kind `gpu` in servers of 8, with the default links.
    pub fn new(gpu: Gpu, devices: u32) -> Result<Cluster> {
        if devices == 0 {
            return Err(CostError::InvalidCluster(
                "a cluster needs at least one device (--devices 0)".into(),
            ));
        }
        let per = DEVICES_PER_SERVER.min(devices);
        Ok(Cluster {
            gpu,
            devices,
            devices_per_server: per,
            servers: devices.div_ceil(per),
            flavor: None,
            memory_per_device_bytes: gpu.spec().hbm_bytes,
            links: Links::default_for(gpu),
        })
    }

    /// The cluster of a flavor (see [`crate::flavor`]) on a GPU kind.
    pub fn from_flavor(name: &str, gpu: Gpu) -> Result<Cluster> {
        let (flavor, devices) = crate::flavor::devices_for(name, gpu)?;
        let mut c = Cluster::new(gpu, devices)?;
        c.flavor = Some(flavor.name.to_string());
        Ok(c)
    }

    /// Parses a cluster file (format in the module docs); `origin` names it in errors. Every field is
    /// honoured or rejected by name: unknown fields are errors, and each value is range-checked against
    /// [`CLUSTER_FILE_LIMITS`].
    pub fn from_json(text: &str, origin: &str) -> Result<Cluster> {
        let err = |reason: String| CostError::ClusterFile {
            path: origin.to_string(),
            reason,
        };
        let f: ClusterFile = serde_json::from_str(text).map_err(|e| err(e.to_string()))?;
        let gpu: Gpu = f
            .gpu
            .parse()
            .map_err(|e: CostError| err(format!("`gpu`: {e}")))?;
        let lim = &CLUSTER_FILE_LIMITS;
        if f.devices == 0 || f.devices > lim.max_devices {
            return Err(err(format!(
                "`devices` {} is out of range (1 to {})",
                f.devices, lim.max_devices
            )));
        }
        let mut c = Cluster::new(gpu, f.devices).map_err(|e| err(e.to_string()))?;
        if let Some(per) = f.devices_per_server {
            if per == 0 || per > lim.max_devices_per_server {
                return Err(err(format!(
                    "`devices_per_server` {per} is out of range (1 to {})",
                    lim.max_devices_per_server
                )));
            }
            c.devices_per_server = per.min(c.devices);
            c.servers = c.devices.div_ceil(c.devices_per_server);
        }
        if let Some(m) = f.memory_per_device_bytes {
            if !(lim.min_memory_per_device_bytes..=lim.max_memory_per_device_bytes).contains(&m) {
                return Err(err(format!(
                    "`memory_per_device_bytes` {m} is out of range ({} to {} bytes, 1 GiB to 16 TiB)",
                    lim.min_memory_per_device_bytes, lim.max_memory_per_device_bytes
                )));
            }
            c.memory_per_device_bytes = m;
        }
        if let Some(l) = f.links {
            let d = c.links;
            c.links = Links {
                pair: l.pair.unwrap_or(d.pair),
                server: l.server.unwrap_or(d.server),
                network: l.network.unwrap_or(d.network),
            };
        }
        for (name, link) in [
            ("pair", c.links.pair),
            ("server", c.links.server),
            ("network", c.links.network),
        ] {
            check_link(name, &link).map_err(err)?;
        }
        if let Some(name) = &f.flavor {
            let (flavor, devices) =
                crate::flavor::devices_for(name, gpu).map_err(|e| err(format!("`flavor`: {e}")))?;
            if devices != c.devices {
                return Err(err(format!(
                    "`flavor` {} is {devices} {gpu} devices, but `devices` is {}",
                    flavor.name, c.devices
                )));
            }
            c.flavor = Some(flavor.name.to_string());
        }
        Ok(c)
    }

    /// Reads a cluster file from disk.
    pub fn load(path: &std::path::Path) -> Result<Cluster> {
        let text = std::fs::read_to_string(path).map_err(|e| CostError::ClusterFile {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Cluster::from_json(&text, &path.display().to_string())
    }

    /// Number of servers a group of `size` consecutive ranks spaced `stride` apart touches, and the
    /// members per server (assuming the group is aligned).
    pub fn group_layout(&self, size: u32, stride: u32) -> (u32, u32) {
        let per = self.devices_per_server.max(1);
        let span = size.saturating_mul(stride.max(1));
        if span <= per {
            (1, size)
        } else {
            let in_server = (per / stride.max(1)).max(1).min(size);
            (size.div_ceil(in_server), in_server)
        }
    }
}

/// The ranges a cluster file's values must lie in.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ClusterFileLimits {
    /// Most devices in a cluster.
    pub max_devices: u32,
    /// Most devices in one server (a scale-up domain such as an NVL72 rack counts as one server).
    pub max_devices_per_server: u32,
    /// Least memory per device, bytes.
    pub min_memory_per_device_bytes: u64,
    /// Most memory per device, bytes.
    pub max_memory_per_device_bytes: u64,
    /// Least link bandwidth, bytes/s (per device per direction).
    pub min_bytes_per_s: f64,
    /// Most link bandwidth, bytes/s.
    pub max_bytes_per_s: f64,
    /// Most latency of one message, seconds.
    pub max_latency_s: f64,
}

/// The limits `Cluster::from_json` enforces: 1 to 1,048,576 devices, 1 to 1,024 per server, 1 GiB to
/// 16 TiB per device, links of 1 MB/s to 100 TB/s with 0 to 1 s latency and an efficiency in (0, 1].
pub const CLUSTER_FILE_LIMITS: ClusterFileLimits = ClusterFileLimits {
    max_devices: 1 << 20,
    max_devices_per_server: 1024,
    min_memory_per_device_bytes: 1 << 30,
    max_memory_per_device_bytes: 1 << 44,
    min_bytes_per_s: 1e6,
    max_bytes_per_s: 1e14,
    max_latency_s: 1.0,
};

/// Range-checks one link of a cluster file; the error names the link and the field.
fn check_link(name: &str, l: &Link) -> std::result::Result<(), String> {
    let lim = &CLUSTER_FILE_LIMITS;
    if !(l.bytes_per_s >= lim.min_bytes_per_s && l.bytes_per_s <= lim.max_bytes_per_s) {
        return Err(format!(
            "`links.{name}.bytes_per_s` {} is out of range ({:e} to {:e} bytes/s)",
            l.bytes_per_s, lim.min_bytes_per_s, lim.max_bytes_per_s
        ));
    }
    if !(l.latency_s >= 0.0 && l.latency_s <= lim.max_latency_s) {
        return Err(format!(
            "`links.{name}.latency_s` {} is out of range (0 to {} s)",
            l.latency_s, lim.max_latency_s
        ));
    }
    if !(l.efficiency > 0.0 && l.efficiency <= 1.0) {
        return Err(format!(
            "`links.{name}.efficiency` {} is out of range (a fraction in (0, 1])",
            l.efficiency
        ));
    }
    Ok(())
}

/// The JSON form of a cluster file (see module docs).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClusterFile {
    gpu: String,
    devices: u32,
    devices_per_server: Option<u32>,
    memory_per_device_bytes: Option<u64>,
    flavor: Option<String>,
    links: Option<LinksFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LinksFile {
    pair: Option<Link>,
    server: Option<Link>,
    network: Option<Link>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let c = Cluster::new(Gpu::Mi250, 32).unwrap();
        assert_eq!((c.servers, c.devices_per_server), (4, 8));
        assert_eq!(c.links.network.bytes_per_s, 12.5e9);
        let h = Cluster::new(Gpu::H100, 1).unwrap();
        assert_eq!((h.servers, h.devices_per_server), (1, 1));
        assert_eq!(h.links.network.bytes_per_s, 25e9);
        assert!(Cluster::new(Gpu::H100, 0).is_err());
    }

    #[test]
    fn cluster_file_overrides() {
        let c = Cluster::from_json(
            r#"{"gpu":"mi300x","devices":16,"links":{"network":{"bytes_per_s":50e9,"latency_s":1e-5}}}"#,
            "c.json",
        )
        .unwrap();
        assert_eq!(c.links.network.bytes_per_s, 50e9);
        assert!(c.links.server.mesh);
        let e = Cluster::from_json(r#"{"gpu":"tpu","devices":4}"#, "c.json").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("cluster file c.json: `gpu`: unknown GPU kind `tpu`"),
            "{e}"
        );
        let e =
            Cluster::from_json(r#"{"gpu":"h100","devices":4,"color":1}"#, "c.json").unwrap_err();
        assert!(e.to_string().contains("unknown field `color`"), "{e}");
    }

    #[test]
    fn cluster_file_fields_are_honoured() {
        let c = Cluster::from_json(
            r#"{"gpu":"mi250","devices":12,"devices_per_server":4,"memory_per_device_bytes":34359738368,
                "flavor":"Large.256GB"}"#,
            "c.json",
        );
        // Large.256GB is 4 GCDs, not 12.
        let e = c.unwrap_err().to_string();
        assert!(
            e.contains("`flavor` Large.256GB is 4 mi250 devices, but `devices` is 12"),
            "{e}"
        );
        let c = Cluster::from_json(
            r#"{"gpu":"mi250","devices":12,"devices_per_server":4,"memory_per_device_bytes":34359738368}"#,
            "c.json",
        )
        .unwrap();
        assert_eq!(
            (
                c.devices,
                c.devices_per_server,
                c.servers,
                c.memory_per_device_bytes
            ),
            (12, 4, 3, 32 << 30)
        );
        let c = Cluster::from_json(
            r#"{"gpu":"mi300x","devices":16,"flavor":"8xlarge.4096gb"}"#,
            "c.json",
        )
        .unwrap();
        assert_eq!(c.flavor.as_deref(), Some("8xLarge.4096GB"));
    }

    #[test]
    fn cluster_file_values_are_range_checked() {
        let bad = [
            (r#"{"gpu":"h100","devices":0}"#, "`devices` 0"),
            (
                r#"{"gpu":"h100","devices":4294967295}"#,
                "`devices` 4294967295",
            ),
            (
                r#"{"gpu":"h100","devices":8,"devices_per_server":0}"#,
                "`devices_per_server` 0",
            ),
            (
                r#"{"gpu":"h100","devices":8,"devices_per_server":5000}"#,
                "`devices_per_server` 5000",
            ),
            (
                r#"{"gpu":"h100","devices":8,"memory_per_device_bytes":0}"#,
                "`memory_per_device_bytes` 0",
            ),
            (
                r#"{"gpu":"h100","devices":8,"memory_per_device_bytes":18446744073709551615}"#,
                "`memory_per_device_bytes` 18446744073709551615",
            ),
            (
                r#"{"gpu":"h100","devices":8,"links":{"network":{"bytes_per_s":25e9,"latency_s":1e-5,"efficiency":50}}}"#,
                "`links.network.efficiency` 50",
            ),
            (
                r#"{"gpu":"h100","devices":8,"links":{"pair":{"bytes_per_s":0,"latency_s":1e-5}}}"#,
                "`links.pair.bytes_per_s` 0",
            ),
            (
                r#"{"gpu":"h100","devices":8,"links":{"server":{"bytes_per_s":1e11,"latency_s":-1}}}"#,
                "`links.server.latency_s` -1",
            ),
            (
                r#"{"gpu":"h100","devices":8,"links":{"server":{"bytes_per_s":1e11,"latency_s":1e-5,"efficency":0.5}}}"#,
                "unknown field `efficency`",
            ),
            (
                r#"{"gpu":"h100","devices":8,"links":{"wan":{"bytes_per_s":1e11,"latency_s":1e-5}}}"#,
                "unknown field `wan`",
            ),
            (
                r#"{"gpu":"h100","devices":8,"flavor":"Large.256GB"}"#,
                "`flavor`",
            ),
            (r#"{"gpu":"v100","devices":8}"#, "`gpu`"),
            (r#"{"devices":8}"#, "missing field `gpu`"),
        ];
        for (text, want) in bad {
            let e = Cluster::from_json(text, "c.json").unwrap_err().to_string();
            assert!(e.starts_with("cluster file c.json: "), "{text}: {e}");
            assert!(e.contains(want), "{text}: {e}");
            assert!(!e.contains('\n'), "{e}");
        }
    }

    #[test]
    fn mesh_bandwidth_grows_with_group() {
        let l = Links::default_for(Gpu::Mi300x).server;
        assert!((l.effective_bytes_per_s(8) - 7.0 * 64e9 * 0.8).abs() < 1.0);
    }

    #[test]
    fn layout() {
        let c = Cluster::new(Gpu::A100, 64).unwrap();
        assert_eq!(c.group_layout(8, 1), (1, 8));
        assert_eq!(c.group_layout(8, 8), (8, 1));
        assert_eq!(c.group_layout(16, 2), (4, 4));
    }
}
