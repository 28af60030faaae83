//! The flavor catalog: virtual accelerator sizes and their physical mapping.
//!
//! A flavor's memory is counted in 64 GB MI250 GCDs: `4xLarge.2048GB` = 32 GCDs = 16 MI250 = 32 MI210
//! = 8 MI300X (one MI300X stands for 4 GCDs), scaled linearly for the others (DESIGN.md). Servers hold
//! 8 GCDs (4 MI250), 8 MI210 or 8 MI300X. H100, H200, B200, A100, MI325X and MI355X have no flavors
//! (plan on them with `--gpu` and `--devices`).

use crate::cluster::DEVICES_PER_SERVER;
use crate::device::Gpu;
use crate::error::{CostError, Result};
use serde::Serialize;

/// The GPU kinds flavors are defined for (the platform's sizes): every other kind is planned with
/// `--gpu K --devices N`.
pub const FLAVOR_GPUS: [Gpu; 3] = [Gpu::Mi250, Gpu::Mi210, Gpu::Mi300x];

/// The error for a GPU kind without flavors, naming the kinds that have them ([`FLAVOR_GPUS`]).
pub fn no_flavors(gpu: Gpu) -> CostError {
    CostError::NoFlavorsForGpu {
        gpu: gpu.name().into(),
        flavored: Gpu::names_in_words(&FLAVOR_GPUS),
    }
}

/// One flavor of the catalog.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Flavor {
    /// Name, e.g. `4xLarge.2048GB`.
    pub name: &'static str,
    /// Nominal memory in GB (64 GB per MI250 GCD).
    pub memory_gb: u64,
}

impl Flavor {
    /// MI250 GCDs (and MI210 cards) this flavor stands for.
    pub fn gcds(&self) -> u64 {
        self.memory_gb / 64
    }

    /// Devices on a GPU kind as a reduced fraction `(numerator, denominator)`.
    pub fn devices_fraction(&self, gpu: Gpu) -> Result<(u64, u64)> {
        let (n, d) = match gpu {
            Gpu::Mi250 | Gpu::Mi210 => (self.gcds(), 1),
            Gpu::Mi300x => (self.gcds(), 4),
            // Every other kind: not in FLAVOR_GPUS.
            _ => return Err(no_flavors(gpu)),
        };
        let g = gcd(n, d);
        Ok((n / g, d / g))
    }
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a.max(1) } else { gcd(b, a % b) }
}

/// The catalog, smallest first.
pub const FLAVORS: [Flavor; 13] = [
    Flavor {
        name: "Small.64GB",
        memory_gb: 64,
    },
    Flavor {
        name: "Medium.128GB",
        memory_gb: 128,
    },
    Flavor {
        name: "Large.256GB",
        memory_gb: 256,
    },
    Flavor {
        name: "xLarge.512GB",
        memory_gb: 512,
    },
    Flavor {
        name: "1.5xLarge.768GB",
        memory_gb: 768,
    },
    Flavor {
        name: "2xLarge.1024GB",
        memory_gb: 1024,
    },
    Flavor {
        name: "3xLarge.1536GB",
        memory_gb: 1536,
    },
    Flavor {
        name: "4xLarge.2048GB",
        memory_gb: 2048,
    },
    Flavor {
        name: "6xLarge.3072GB",
        memory_gb: 3072,
    },
    Flavor {
        name: "8xLarge.4096GB",
        memory_gb: 4096,
    },
    Flavor {
        name: "12xLarge.6144GB",
        memory_gb: 6144,
    },
    Flavor {
        name: "24xLarge.12288GB",
        memory_gb: 12288,
    },
    Flavor {
        name: "48xLarge.24576GB",
        memory_gb: 24576,
    },
];

/// Levenshtein distance over lowercase characters.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.to_lowercase().chars().collect();
    let b: Vec<char> = b.to_lowercase().chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Looks a flavor up by name (case-insensitive); an unknown name is an error suggesting the nearest.
pub fn flavor(name: &str) -> Result<Flavor> {
    let wanted = name.trim();
    if let Some(f) = FLAVORS.iter().find(|f| f.name.eq_ignore_ascii_case(wanted)) {
        return Ok(*f);
    }
    let suggestion = FLAVORS
        .iter()
        .min_by_key(|f| edit_distance(f.name, wanted))
        .map(|f| f.name.to_string());
    Err(CostError::UnknownFlavor {
        name: name.to_string(),
        suggestion,
    })
}

/// The flavor and its whole number of devices on a GPU kind, or an error saying why there is none.
pub fn devices_for(name: &str, gpu: Gpu) -> Result<(Flavor, u32)> {
    let f = flavor(name)?;
    let (n, d) = f.devices_fraction(gpu)?;
    if d != 1 {
        return Err(CostError::NoWholeDeviceMapping {
            flavor: f.name.to_string(),
            gpu: gpu.name().to_string(),
            numerator: n,
            denominator: d,
        });
    }
    Ok((f, n as u32))
}

/// One row of the flavor table for one GPU kind.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FlavorMapping {
    /// GPU kind.
    pub gpu: Gpu,
    /// Whole devices, or `None` when the flavor has no whole-device mapping on this kind.
    pub devices: Option<u32>,
    /// Servers of 8 devices (the last may be partly used).
    pub servers: Option<u32>,
    /// Memory of one device, bytes.
    pub memory_per_device_bytes: u64,
}

/// One row of `moai-compile flavors`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FlavorRow {
    /// Flavor name.
    pub name: &'static str,
    /// Nominal memory, GB.
    pub memory_gb: u64,
    /// Mapping on each AMD kind (mi250, mi210, mi300x).
    pub mappings: Vec<FlavorMapping>,
}

/// The flavor table: every flavor with its devices and servers on each AMD GPU kind.
pub fn flavors() -> Vec<FlavorRow> {
    FLAVORS
        .iter()
        .map(|f| FlavorRow {
            name: f.name,
            memory_gb: f.memory_gb,
            mappings: FLAVOR_GPUS
                .into_iter()
                .map(|gpu| {
                    let devices = match f.devices_fraction(gpu) {
                        Ok((n, 1)) => Some(n as u32),
                        _ => None,
                    };
                    FlavorMapping {
                        gpu,
                        devices,
                        servers: devices.map(|d| d.div_ceil(DEVICES_PER_SERVER)),
                        memory_per_device_bytes: gpu.spec().hbm_bytes,
                    }
                })
                .collect(),
        })
        .collect()
}

/// Renders the `moai-compile flavors [--gpu K]` table. `gpu = None` shows every kind of
/// [`FLAVOR_GPUS`]; any other kind is an error (no flavors).
pub fn render_flavors(gpu: Option<Gpu>) -> Result<String> {
    render_flavors_marked(gpu, None)
}

/// The flavor table with the current flavor starred (`*` after its name, as the platform's
/// `moreh-switch-model` list shows it); `current = None` stars nothing. An unknown `current` is an
/// error (it would silently star nothing).
pub fn render_flavors_marked(gpu: Option<Gpu>, current: Option<&str>) -> Result<String> {
    let current = current.map(flavor).transpose()?;
    if let Some(g) = gpu
        && !FLAVOR_GPUS.contains(&g)
    {
        return Err(no_flavors(g));
    }
    let mut out = String::new();
    let kinds: Vec<Gpu> = match gpu {
        Some(g) => vec![g],
        None => FLAVOR_GPUS.to_vec(),
    };
    out.push_str(&format!("{:<18}   {:>8}", "flavor", "memory"));
    for k in &kinds {
        let label = match k {
            Gpu::Mi250 => "mi250 (GCDs/pkgs/servers)".to_string(),
            _ => format!("{k} (devices/servers)"),
        };
        out.push_str(&format!("  {label:>26}"));
    }
    out.push('\n');
    for row in flavors() {
        let star = if current.is_some_and(|c| c.name == row.name) {
            '*'
        } else {
            ' '
        };
        out.push_str(&format!("{:<18} {star} {:>6}GB", row.name, row.memory_gb));
        for k in &kinds {
            let m = row.mappings.iter().find(|m| m.gpu == *k);
            let cell = match m.and_then(|m| m.devices.zip(m.servers)) {
                Some((d, s)) if *k == Gpu::Mi250 => {
                    format!(
                        "{d} GCDs / {} / {s}",
                        if d % 2 == 0 {
                            (d / 2).to_string()
                        } else {
                            format!("{}.5", d / 2)
                        }
                    )
                }
                Some((d, s)) => format!("{d} / {s}"),
                None => {
                    let (n, d) = FLAVORS
                        .iter()
                        .find(|f| f.name == row.name)
                        .and_then(|f| f.devices_fraction(*k).ok())
                        .unwrap_or((0, 1));
                    format!("none ({n}/{d} device)")
                }
            };
            out.push_str(&format!("  {cell:>26}"));
        }
        out.push('\n');
    }
    let mems: Vec<String> = kinds
        .iter()
        .map(|k| format!("{k} {} GB", k.spec().hbm_bytes >> 30))
        .collect();
    out.push_str(&format!("memory per device: {}\n", mems.join(", ")));
    if let Some(c) = current {
        out.push_str(&format!("* current flavor: {}\n", c.name));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn design_mapping() {
        assert_eq!(devices_for("4xLarge.2048GB", Gpu::Mi250).unwrap().1, 32);
        assert_eq!(devices_for("4xLarge.2048GB", Gpu::Mi210).unwrap().1, 32);
        assert_eq!(devices_for("4xLarge.2048GB", Gpu::Mi300x).unwrap().1, 8);
        assert_eq!(devices_for("8xlarge.4096gb", Gpu::Mi300x).unwrap().1, 16);
        assert_eq!(devices_for("Small.64GB", Gpu::Mi250).unwrap().1, 1);
    }

    #[test]
    fn fractional_and_unknown() {
        let e = devices_for("Small.64GB", Gpu::Mi300x).unwrap_err();
        assert_eq!(
            e.to_string(),
            "flavor `Small.64GB` has no whole-device mapping on mi300x: it would be 1/4 of a device"
        );
        let e = devices_for("4xLarg.2048GB", Gpu::Mi250).unwrap_err();
        assert_eq!(
            e.to_string(),
            "unknown flavor `4xLarg.2048GB` (did you mean `4xLarge.2048GB`?)"
        );
        assert!(devices_for("Large.256GB", Gpu::H100).is_err());
    }

    #[test]
    fn table_rows() {
        let rows = flavors();
        assert_eq!(rows.len(), 13);
        let r = rows.iter().find(|r| r.name == "4xLarge.2048GB").unwrap();
        assert_eq!(r.mappings[0].servers, Some(4));
        assert_eq!(r.mappings[2].devices, Some(8));
        let text = render_flavors(None).unwrap();
        assert!(text.contains("32 GCDs / 16 / 4"), "{text}");
        assert!(text.contains("none (1/4 device)"), "{text}");
        assert_eq!(
            render_flavors(Some(Gpu::A100)).unwrap_err().to_string(),
            "flavors are defined for mi250, mi210 and mi300x, not a100; give --gpu a100 --devices N instead"
        );
        assert!(!text.contains('*'), "{text}");
        // Every kind without flavors is refused in one line, AMD ones too (not a table of `none`).
        for g in Gpu::ALL {
            let r = render_flavors(Some(g));
            assert_eq!(r.is_ok(), FLAVOR_GPUS.contains(&g), "{g}: {r:?}");
            assert_eq!(
                flavor("4xLarge.2048GB")
                    .unwrap()
                    .devices_fraction(g)
                    .is_ok(),
                FLAVOR_GPUS.contains(&g),
                "{g}"
            );
        }
    }

    #[test]
    fn current_flavor_is_starred() {
        let text = render_flavors_marked(Some(Gpu::Mi250), Some("8xlarge.4096GB")).unwrap();
        let starred: Vec<&str> = text.lines().filter(|l| l.contains(" * ")).collect();
        assert_eq!(starred.len(), 1, "{text}");
        assert!(starred[0].starts_with("8xLarge.4096GB "), "{text}");
        assert!(
            text.ends_with("* current flavor: 8xLarge.4096GB\n"),
            "{text}"
        );
        assert!(render_flavors_marked(None, Some("9xLarge")).is_err());
    }

    #[test]
    fn distance() {
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "ab"), 2);
    }
}
