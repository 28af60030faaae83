//! Devices: the GPU kinds moai plans for and their peak figures.
//!
//! Peak bf16 and fp8 dense matrix throughput, HBM size and bandwidth come from
//! `data/hardware_peaks.csv` (vendor datasheets and ROCm architecture pages, cited per row), parsed
//! once. The fp32 peaks are not in that table; they are datasheet figures recorded in [`FP32_PEAKS`].
//! A GPU kind without FP8 matrix units (A100, MI250, MI210) has an empty `fp8_dense_tflops` cell.

use crate::error::{CostError, Result};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;

/// The hardware table, embedded at build time.
pub const HARDWARE_PEAKS_CSV: &str = include_str!("../data/hardware_peaks.csv");

/// fp32 peaks (FLOP/s) per GPU kind, from vendor datasheets (not in the CSV): A100 SXM 19.5 TFLOP/s
/// (non-tensor), H100 SXM5 66.9 TFLOP/s, MI250 GCD 45.3 TFLOP/s (half of the OAM's 90.5 matrix fp32),
/// MI210 45.3 TFLOP/s (matrix fp32), MI300X 163.4 TFLOP/s (matrix fp32), H200 66.9 TFLOP/s (the H100
/// die), HGX B200 80 TFLOP/s (1000 W), MI325X 163.4 TFLOP/s (the MI300X die), MI355X 157.3 TFLOP/s
/// (vector fp32, AMD MI355X datasheet), MI250X GCD 47.9 TFLOP/s (half of the OAM's 95.7 matrix fp32),
/// H100 SXM5 HBM2e 66.9 TFLOP/s (the H100 die; its power limit is costed as a sustained clock).
pub const FP32_PEAKS: [(Gpu, f64); 11] = [
    (Gpu::A100, 19.5e12),
    (Gpu::H100, 66.9e12),
    (Gpu::Mi250, 45.3e12),
    (Gpu::Mi210, 45.3e12),
    (Gpu::Mi300x, 163.4e12),
    (Gpu::H200, 66.9e12),
    (Gpu::B200, 80.0e12),
    (Gpu::Mi325x, 163.4e12),
    (Gpu::Mi355x, 157.3e12),
    (Gpu::Mi250x, 47.85e12),
    (Gpu::H100Hbm2e, 66.9e12),
];

/// Maximum achievable matmul throughput per GPU kind and dtype
/// (`gpu,dtype,peak_tflops,max_achievable_tflops,m,n,k,source`): the best shape of a GEMM sweep
/// (ml-engineering's mamf-finder table, AMD's max-achievable-FLOPs blog), sources per row. The bf16
/// row is the asymptote of the GEMM model.
pub const MATMUL_MAX_ACHIEVABLE_CSV: &str = include_str!("../data/matmul_max_achievable.csv");

/// The bf16 maximum achievable FLOP/s of a GPU kind from [`MATMUL_MAX_ACHIEVABLE_CSV`], if listed.
pub fn max_achievable_bf16(gpu: Gpu) -> Option<f64> {
    max_achievable(gpu, "bf16")
}

/// The maximum achievable FLOP/s of a GPU kind for `dtype` (`bf16`, `fp16`, `fp8`) from
/// [`MATMUL_MAX_ACHIEVABLE_CSV`], if listed.
pub fn max_achievable(gpu: Gpu, dtype: &str) -> Option<f64> {
    let mut lines = MATMUL_MAX_ACHIEVABLE_CSV
        .lines()
        .filter(|l| !l.trim().is_empty());
    let header = split_csv_line(lines.next()?);
    let col = |n: &str| header.iter().position(|h| h.trim() == n);
    let (cg, cd, cm) = (col("gpu")?, col("dtype")?, col("max_achievable_tflops")?);
    lines.map(split_csv_line).find_map(|f| {
        let g: Gpu = f.get(cg)?.parse().ok()?;
        (g == gpu && f.get(cd)?.trim() == dtype)
            .then(|| f.get(cm)?.trim().parse::<f64>().ok())
            .flatten()
            .map(|t| t * 1e12)
    })
}

/// A GPU kind. For MI250 the device moai plans on is one GCD (graphics compute die): an MI250 package
/// holds two, each with its own 64 GB of HBM, and the runtime sees each as a GPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Gpu {
    /// One GCD of an AMD Instinct MI250 (gfx90a).
    Mi250,
    /// AMD Instinct MI210 (one gfx90a GCD per card).
    Mi210,
    /// AMD Instinct MI300X (gfx942).
    Mi300x,
    /// NVIDIA H100 SXM5 80 GB.
    H100,
    /// NVIDIA A100 SXM 80 GB.
    A100,
    /// NVIDIA H200 SXM 141 GB (the H100 die with HBM3e).
    H200,
    /// NVIDIA B200 (HGX, 1000 W, 180 GB usable).
    B200,
    /// AMD Instinct MI325X (gfx942, the MI300X die with 256 GB HBM3E).
    Mi325x,
    /// AMD Instinct MI355X (gfx950).
    Mi355x,
    /// One GCD of an AMD Instinct MI250X (gfx90a, 110 CUs): the GPU of Frontier and LUMI-G.
    Mi250x,
    /// NVIDIA H100 SXM5 with 96 GB HBM2e (2.4 TB/s) at a 500 W power limit: the H100 of Meta's
    /// Grand Teton servers, on which PyTorch's torchtitan benchmarks ran. The same die as
    /// [`Gpu::H100`]; the power limit lowers its sustained clock under tensor-core load
    /// ([`Gpu::sustained_clock_bounds`]).
    #[serde(rename = "h100-hbm2e")]
    H100Hbm2e,
}

impl Gpu {
    /// Every kind, in catalog order.
    pub const ALL: [Gpu; 11] = [
        Gpu::Mi250,
        Gpu::Mi210,
        Gpu::Mi300x,
        Gpu::H100,
        Gpu::A100,
        Gpu::H200,
        Gpu::B200,
        Gpu::Mi325x,
        Gpu::Mi355x,
        Gpu::Mi250x,
        Gpu::H100Hbm2e,
    ];

    /// The names `--gpu` accepts, comma-separated, in catalog order.
    pub const NAMES: &'static str =
        "mi250, mi210, mi300x, h100, a100, h200, b200, mi325x, mi355x, mi250x, h100-hbm2e";

    /// The lowercase name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Gpu::Mi250 => "mi250",
            Gpu::Mi210 => "mi210",
            Gpu::Mi300x => "mi300x",
            Gpu::H100 => "h100",
            Gpu::A100 => "a100",
            Gpu::H200 => "h200",
            Gpu::B200 => "b200",
            Gpu::Mi325x => "mi325x",
            Gpu::Mi355x => "mi355x",
            Gpu::Mi250x => "mi250x",
            Gpu::H100Hbm2e => "h100-hbm2e",
        }
    }

    /// Kinds as a list in words, in the order given: `a`, `a and b`, `a, b and c`.
    pub fn names_in_words(gpus: &[Gpu]) -> String {
        let names: Vec<&str> = gpus.iter().map(|g| g.name()).collect();
        match names.split_last() {
            Some((last, [])) => last.to_string(),
            Some((last, rest)) => format!("{} and {last}", rest.join(", ")),
            None => "no GPU kind".to_string(),
        }
    }

    /// Whether the device moai plans on is one GCD (graphics compute die) of a two-die package:
    /// MI250 and MI250X, which the runtime (rocm-smi) lists as two devices per package.
    pub fn is_gcd(self) -> bool {
        matches!(self, Gpu::Mi250 | Gpu::Mi250x)
    }

    /// The architecture family: the one owner of which kinds share fitted coefficients.
    pub fn family(self) -> Family {
        match self {
            Gpu::Mi250 | Gpu::Mi210 | Gpu::Mi250x => Family::Cdna2,
            Gpu::Mi300x | Gpu::Mi325x => Family::Cdna3,
            Gpu::Mi355x => Family::Cdna4,
            Gpu::A100 => Family::Ampere,
            Gpu::H100 | Gpu::H200 | Gpu::H100Hbm2e => Family::Hopper,
            Gpu::B200 => Family::Blackwell,
        }
    }

    /// The sustained tensor-core clock of a kind that runs below its die's rated power, as a
    /// fraction of the clock its maximum achievable matmul rate was measured at (the same die at
    /// full power): `None` for kinds that run at their rated power. Compute-bound kernels (GEMMs,
    /// fused attention) run at this fraction; memory-bound kernels keep the HBM's rate.
    pub fn sustained_clock_bounds(self) -> Option<SustainedClock> {
        match self {
            Gpu::H100Hbm2e => Some(SustainedClock {
                // torchtitan benchmarks/llama3_h100_202412_torchtitan.md, footnote 2: "HBM2e-based
                // SXM H100 with lower TDP, the actual peak TFLOPs number is between SXM and NVL".
                // H100 NVL: 1,671 TFLOPS bf16 with sparsity (NVIDIA H100 datasheet), 835.5 dense,
                // over the SXM's 989.4.
                lo: 835.5 / 989.4,
                hi: 1.0,
                // Dynamic power ∝ f·V² with V ∝ f on the DVFS curve: f ∝ P^(1/3) at 500 of 700 W,
                // static power neglected (the highest clock the cap allows).
                prior: (500.0_f64 / 700.0).cbrt(),
            }),
            _ => None,
        }
    }

    /// True for AMD devices.
    pub fn is_amd(self) -> bool {
        matches!(
            self,
            Gpu::Mi250 | Gpu::Mi210 | Gpu::Mi250x | Gpu::Mi300x | Gpu::Mi325x | Gpu::Mi355x
        )
    }

    /// True when the device has FP8 matrix units (a dense fp8 peak in `hardware_peaks.csv`): H100,
    /// H200, B200, MI300X, MI325X, MI355X; not A100, MI250, MI210.
    pub fn has_fp8(self) -> bool {
        self.spec().peak_fp8_flops.is_some()
    }

    /// The device's peak figures.
    pub fn spec(self) -> &'static DeviceSpec {
        let table = device_table();
        // The table holds every kind (checked by `device_table`'s construction and by tests).
        &table[Gpu::ALL.iter().position(|g| *g == self).unwrap_or(0)]
    }
}

impl fmt::Display for Gpu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Gpu {
    type Err = CostError;
    fn from_str(s: &str) -> Result<Gpu> {
        match s.trim().to_ascii_lowercase().as_str() {
            "mi250" => Ok(Gpu::Mi250),
            "mi210" => Ok(Gpu::Mi210),
            "mi300x" => Ok(Gpu::Mi300x),
            "h100" => Ok(Gpu::H100),
            "a100" => Ok(Gpu::A100),
            "h200" => Ok(Gpu::H200),
            "b200" => Ok(Gpu::B200),
            "mi325x" => Ok(Gpu::Mi325x),
            "mi355x" => Ok(Gpu::Mi355x),
            "mi250x" => Ok(Gpu::Mi250x),
            "h100-hbm2e" => Ok(Gpu::H100Hbm2e),
            _ => Err(CostError::UnknownGpu(s.to_string())),
        }
    }
}

/// A GPU architecture family: the devices whose kernels (GEMM tiles, fused attention, memory-bound
/// kernels) are the same code on the same compute-unit design, so they reach the same *fractions* of
/// their own maximum achievable rates (peaks, CU counts, HBM and clocks stay per device). The fit
/// ([`crate::fit`]) ties the time coefficients per family: rows of one member inform every member.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    /// AMD CDNA 2 (gfx90a): MI250 GCDs, MI210, MI250X GCDs.
    Cdna2,
    /// AMD CDNA 3 (gfx942): MI300X, MI325X.
    Cdna3,
    /// AMD CDNA 4 (gfx950): MI355X.
    Cdna4,
    /// NVIDIA Ampere (sm_80): A100.
    Ampere,
    /// NVIDIA Hopper (sm_90): H100, H200.
    Hopper,
    /// NVIDIA Blackwell (sm_100): B200.
    Blackwell,
}

impl Family {
    /// Every family, in the catalog order of its first member.
    pub const ALL: [Family; 6] = [
        Family::Cdna2,
        Family::Cdna3,
        Family::Ampere,
        Family::Hopper,
        Family::Blackwell,
        Family::Cdna4,
    ];

    /// The lowercase name (`cdna2`, `hopper`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Family::Cdna2 => "cdna2",
            Family::Cdna3 => "cdna3",
            Family::Cdna4 => "cdna4",
            Family::Ampere => "ampere",
            Family::Hopper => "hopper",
            Family::Blackwell => "blackwell",
        }
    }

    /// The member GPU kinds, in catalog order ([`Gpu::ALL`]).
    pub fn members(self) -> Vec<Gpu> {
        Gpu::ALL
            .into_iter()
            .filter(|g| g.family() == self)
            .collect()
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Where the sustained clock of a power-limited GPU kind may lie (fractions of the full-power
/// clock) and its prior centre ([`Gpu::sustained_clock_bounds`]); the fit places it
/// ([`crate::fit`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SustainedClock {
    /// Lowest fraction the sources allow.
    pub lo: f64,
    /// Highest fraction (1: the full-power clock).
    pub hi: f64,
    /// Prior centre of the fit.
    pub prior: f64,
}

/// Peak figures of one device.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeviceSpec {
    /// Which kind.
    pub gpu: Gpu,
    /// Name as the data sheet gives it.
    pub name: String,
    /// Peak dense bf16 matrix throughput, FLOP/s.
    pub peak_bf16_flops: f64,
    /// Peak dense fp8 matrix throughput, FLOP/s; `None` for a device without FP8 matrix units.
    #[serde(default)]
    pub peak_fp8_flops: Option<f64>,
    /// Peak fp32 throughput, FLOP/s.
    pub peak_fp32_flops: f64,
    /// HBM capacity in bytes (the data sheet's "GB" read as GiB, as the runtimes report it).
    pub hbm_bytes: u64,
    /// HBM bandwidth, bytes/s.
    pub hbm_bytes_per_s: f64,
    /// Compute units (NVIDIA SMs, AMD CUs) from the table's `compute_units` column: the number of
    /// GEMM tiles one wave runs.
    pub compute_units: u32,
    /// Maximum achievable dense bf16 matmul throughput (FLOP/s): the asymptote of the GEMM model
    /// (see [`MATMUL_MAX_ACHIEVABLE_CSV`]).
    pub max_achievable_bf16_flops: f64,
    /// Maximum achievable dense fp8 matmul throughput (FLOP/s): the asymptote of the GEMM model for
    /// FP8 GEMMs; `None` without FP8 matrix units.
    #[serde(default)]
    pub max_achievable_fp8_flops: Option<f64>,
    /// Interconnect as the data sheet describes it.
    pub interconnect: String,
    /// Where the figures come from.
    pub source: String,
}

impl DeviceSpec {
    /// Peak FLOP/s for a compute dtype: the fp8 matrix peak for 8-bit floats on a device with FP8
    /// matrix units (the bf16 peak without them), the bf16 matrix peak for bf16/f16, fp32 otherwise.
    pub fn peak_flops(&self, dtype: moai_ir::DType) -> f64 {
        use moai_ir::DType::*;
        match dtype {
            F8E4M3FN | F8E4M3FNUZ | F8E5M2 | F8E5M2FNUZ => {
                self.peak_fp8_flops.unwrap_or(self.peak_bf16_flops)
            }
            BF16 | F16 => self.peak_bf16_flops,
            _ => self.peak_fp32_flops,
        }
    }
}

impl DeviceSpec {
    /// Maximum achievable matmul FLOP/s for a compute dtype: the fp8 asymptote for 8-bit floats on a
    /// device with FP8 matrix units, the bf16 asymptote for 16-bit types (and 8-bit ones without FP8
    /// units), the fp32 peak scaled by the bf16 achievable fraction otherwise.
    pub fn max_achievable_flops(&self, dtype: moai_ir::DType) -> f64 {
        use moai_ir::DType::*;
        if matches!(dtype, F8E4M3FN | F8E4M3FNUZ | F8E5M2 | F8E5M2FNUZ)
            && let Some(f) = self.max_achievable_fp8_flops
        {
            return f;
        }
        let frac = self.max_achievable_bf16_flops / self.peak_bf16_flops;
        let dtype = if matches!(dtype, F8E4M3FN | F8E4M3FNUZ | F8E5M2 | F8E5M2FNUZ) {
            BF16
        } else {
            dtype
        };
        self.peak_flops(dtype) * if frac.is_finite() { frac } else { 0.75 }
    }
}

/// Splits one CSV line, honouring double quotes.
pub(crate) fn split_csv_line(line: &str) -> Vec<String> {
    let mut fields = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in line.chars() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => fields.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    fields.push(cur);
    fields
}

/// Parses the hardware table (`device,unit,bf16_dense_tflops,fp8_dense_tflops,hbm_GB,hbm_TBps,...`)
/// into one spec per GPU kind, in [`Gpu::ALL`] order. MI250 uses the `GCD` row; an empty
/// `fp8_dense_tflops` means no FP8 matrix units.
pub fn parse_hardware_csv(csv: &str) -> Result<Vec<DeviceSpec>> {
    let bad = |reason: String| CostError::Profile {
        origin: "hardware_peaks.csv".into(),
        reason,
    };
    let mut lines = csv.lines().filter(|l| !l.trim().is_empty());
    let header = split_csv_line(lines.next().ok_or_else(|| bad("empty table".into()))?);
    let col = |name: &str| {
        header
            .iter()
            .position(|h| h.trim() == name)
            .ok_or_else(|| bad(format!("missing column `{name}`")))
    };
    let c_cu = col("compute_units")?;
    let c_fp8 = col("fp8_dense_tflops")?;
    let (c_dev, c_unit, c_tf, c_gb, c_bw, c_ic, c_src) = (
        col("device")?,
        col("unit")?,
        col("bf16_dense_tflops")?,
        col("hbm_GB")?,
        col("hbm_TBps")?,
        col("interconnect")?,
        col("source")?,
    );
    let mut out: Vec<Option<DeviceSpec>> = vec![None; Gpu::ALL.len()];
    let mut previous_interconnect = String::new();
    for (i, line) in lines.enumerate() {
        let f = split_csv_line(line);
        let get = |c: usize| f.get(c).map(|s| s.trim().to_string()).unwrap_or_default();
        let num = |c: usize| {
            get(c)
                .parse::<f64>()
                .map_err(|_| bad(format!("row {}: column {c} is not a number", i + 2)))
        };
        let dev = get(c_dev).to_ascii_uppercase();
        let unit = get(c_unit).to_ascii_uppercase();
        // Longer names first: `MI250X` before `MI250`.
        let Some(gpu) = [
            ("A100", Gpu::A100),
            ("H100 SXM5 96GB HBM2E", Gpu::H100Hbm2e),
            ("H100", Gpu::H100),
            ("H200", Gpu::H200),
            ("B200", Gpu::B200),
            ("MI325X", Gpu::Mi325x),
            ("MI355X", Gpu::Mi355x),
            ("MI250X", Gpu::Mi250x),
            ("MI250", Gpu::Mi250),
            ("MI210", Gpu::Mi210),
            ("MI300X", Gpu::Mi300x),
        ]
        .into_iter()
        .find(|(prefix, _)| dev.starts_with(prefix))
        .map(|(_, g)| g) else {
            continue;
        };
        let mut interconnect = get(c_ic);
        if interconnect == "as above" {
            // A GCD row refers to its package's row before it.
            interconnect = previous_interconnect.clone();
        }
        previous_interconnect = interconnect.clone();
        // A GCD kind is costed from its GCD row; the package row only lends its interconnect.
        if gpu.is_gcd() && unit != "GCD" {
            continue;
        }
        let fp32 = FP32_PEAKS
            .iter()
            .find(|(g, _)| *g == gpu)
            .map(|(_, p)| *p)
            .unwrap_or(0.0);
        let idx = Gpu::ALL.iter().position(|g| *g == gpu).unwrap_or(0);
        let cus = get(c_cu)
            .split_whitespace()
            .next()
            .and_then(|t| t.parse::<u32>().ok())
            .filter(|n| *n > 0)
            .ok_or_else(|| bad(format!("row {}: compute_units is not a count", i + 2)))?;
        let peak = num(c_tf)? * 1e12;
        // Unlisted kinds: 0.75 of peak (typical of the listed ones).
        let mamf = max_achievable_bf16(gpu).unwrap_or(0.75 * peak).min(peak);
        let fp8 = match get(c_fp8).as_str() {
            "" => None,
            _ => Some(num(c_fp8)? * 1e12),
        };
        // Without a measured fp8 asymptote: the bf16 achievable fraction of the fp8 peak.
        let mamf8 = fp8.map(|p8| {
            max_achievable(gpu, "fp8")
                .unwrap_or(p8 * mamf / peak)
                .min(p8)
        });
        out[idx] = Some(DeviceSpec {
            gpu,
            name: format!("{} ({})", get(c_dev), get(c_unit)),
            peak_bf16_flops: peak,
            peak_fp8_flops: fp8,
            peak_fp32_flops: fp32,
            compute_units: cus,
            max_achievable_bf16_flops: mamf,
            max_achievable_fp8_flops: mamf8,
            hbm_bytes: (num(c_gb)? * (1u64 << 30) as f64) as u64,
            hbm_bytes_per_s: num(c_bw)? * 1e12,
            interconnect,
            source: get(c_src),
        });
    }
    out.into_iter()
        .zip(Gpu::ALL)
        .map(|(s, g)| s.ok_or_else(|| bad(format!("no row for {g}"))))
        .collect()
}

fn device_table() -> &'static [DeviceSpec] {
    static TABLE: OnceLock<Vec<DeviceSpec>> = OnceLock::new();
    TABLE.get_or_init(|| {
        // The embedded table is part of the build; a parse failure is a packaging bug caught by tests.
        parse_hardware_csv(HARDWARE_PEAKS_CSV).unwrap_or_default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_table_has_every_gpu() {
        let t = parse_hardware_csv(HARDWARE_PEAKS_CSV).unwrap();
        assert_eq!(t.len(), Gpu::ALL.len());
        assert_eq!(Gpu::Mi250.spec().peak_bf16_flops, 181.0e12);
        assert_eq!(Gpu::Mi250.spec().hbm_bytes, 64 << 30);
        assert_eq!(Gpu::H100.spec().peak_bf16_flops, 989.4e12);
        assert_eq!(Gpu::Mi300x.spec().hbm_bytes_per_s, 5.3e12);
        assert_eq!(Gpu::A100.spec().gpu, Gpu::A100);
        assert_eq!(Gpu::H100.spec().compute_units, 132);
        assert_eq!(Gpu::Mi300x.spec().compute_units, 304);
        // An MI250X GCD: 110 CUs at the MI250's clock, measured (not derived) maximum matmul rate.
        assert_eq!(Gpu::Mi250x.spec().peak_bf16_flops, 191.5e12);
        assert_eq!(Gpu::Mi250x.spec().compute_units, 110);
        assert_eq!(Gpu::Mi250x.spec().max_achievable_bf16_flops, 147.0e12);
        // GCD rows ("as above") take their package row's interconnect.
        for g in [Gpu::Mi250, Gpu::Mi250x] {
            let ic = &g.spec().interconnect;
            assert!(ic.starts_with("Infinity Fabric 50 GB/s"), "{g}: {ic}");
        }
        assert_eq!(Gpu::Mi250x.spec().hbm_bytes, 64 << 30);
        for g in Gpu::ALL {
            let s = g.spec();
            assert!(s.max_achievable_bf16_flops > 0.5 * s.peak_bf16_flops);
            assert!(s.max_achievable_bf16_flops <= s.peak_bf16_flops);
            assert_eq!(g.name().parse::<Gpu>().unwrap(), g);
            assert!(Gpu::NAMES.contains(g.name()), "{g}");
            if let (Some(p8), Some(m8)) = (s.peak_fp8_flops, s.max_achievable_fp8_flops) {
                // fp8 runs at twice the bf16 rate on every listed device; achievable below peak.
                assert!((p8 / s.peak_bf16_flops - 2.0).abs() < 1e-3, "{g}");
                assert!(m8 <= p8 && m8 > s.max_achievable_bf16_flops, "{g}");
            } else {
                assert!(s.max_achievable_fp8_flops.is_none(), "{g}");
            }
        }
    }

    #[test]
    fn new_gpus_come_from_their_datasheets() {
        let fp8: Vec<Gpu> = Gpu::ALL.into_iter().filter(|g| g.has_fp8()).collect();
        assert_eq!(
            fp8,
            vec![
                Gpu::Mi300x,
                Gpu::H100,
                Gpu::H200,
                Gpu::B200,
                Gpu::Mi325x,
                Gpu::Mi355x,
                Gpu::H100Hbm2e
            ]
        );
        let h200 = Gpu::H200.spec();
        assert_eq!(h200.peak_bf16_flops, 989.4e12);
        assert_eq!(h200.hbm_bytes, 141 << 30);
        assert_eq!(h200.hbm_bytes_per_s, 4.8e12);
        assert_eq!(h200.compute_units, 132);
        let b200 = Gpu::B200.spec();
        assert_eq!(b200.peak_bf16_flops, 2250e12);
        assert_eq!(b200.peak_fp8_flops, Some(4500e12));
        assert_eq!(b200.hbm_bytes, 180 << 30);
        assert_eq!(b200.compute_units, 148);
        let mi325 = Gpu::Mi325x.spec();
        assert_eq!(mi325.hbm_bytes, 256 << 30);
        assert_eq!(mi325.hbm_bytes_per_s, 6.0e12);
        assert_eq!(mi325.compute_units, 304);
        let mi355 = Gpu::Mi355x.spec();
        assert_eq!(mi355.peak_fp8_flops, Some(5033.2e12));
        assert_eq!(mi355.hbm_bytes, 288 << 30);
        assert_eq!(mi355.compute_units, 256);
        assert!(Gpu::Mi325x.is_amd() && Gpu::Mi355x.is_amd() && !Gpu::B200.is_amd());
        // 8-bit GEMMs run at the fp8 asymptote where there are FP8 units, the bf16 one otherwise.
        use moai_ir::DType;
        assert_eq!(
            Gpu::H100.spec().max_achievable_flops(DType::F8E4M3FN),
            1402.6e12
        );
        assert_eq!(
            Gpu::A100.spec().max_achievable_flops(DType::F8E4M3FN),
            Gpu::A100.spec().max_achievable_flops(DType::BF16)
        );
    }

    /// The Grand Teton H100: the H100 die and its nominal peaks, its own memory (96 GB HBM2e at
    /// 2.4 TB/s), the same maximum achievable matmul rates (measured at full power), and the only
    /// kind with a sustained clock below full power, bounded by the H100 NVL's peak.
    #[test]
    fn power_limited_h100_is_the_h100_die_with_hbm2e() {
        let (gt, h100) = (Gpu::H100Hbm2e.spec(), Gpu::H100.spec());
        assert_eq!(gt.gpu, Gpu::H100Hbm2e);
        assert_eq!(gt.peak_bf16_flops, h100.peak_bf16_flops);
        assert_eq!(gt.peak_fp8_flops, h100.peak_fp8_flops);
        assert_eq!(gt.compute_units, h100.compute_units);
        assert_eq!(gt.max_achievable_bf16_flops, h100.max_achievable_bf16_flops);
        assert_eq!(gt.max_achievable_fp8_flops, h100.max_achievable_fp8_flops);
        assert_eq!(gt.hbm_bytes, 96 << 30);
        assert_eq!(gt.hbm_bytes_per_s, 2.4e12);
        assert_eq!(Gpu::H100Hbm2e.family(), Family::Hopper);
        assert_eq!("h100-hbm2e".parse::<Gpu>().unwrap(), Gpu::H100Hbm2e);
        assert_eq!(
            serde_json::to_string(&Gpu::H100Hbm2e).unwrap(),
            "\"h100-hbm2e\""
        );
        let limited: Vec<Gpu> = Gpu::ALL
            .into_iter()
            .filter(|g| g.sustained_clock_bounds().is_some())
            .collect();
        assert_eq!(limited, vec![Gpu::H100Hbm2e]);
        let c = Gpu::H100Hbm2e.sustained_clock_bounds().unwrap();
        assert!((c.lo - 0.8445).abs() < 1e-4 && c.hi == 1.0, "{c:?}");
        assert!(c.lo < c.prior && c.prior < c.hi, "{c:?}");
    }

    #[test]
    fn families_group_one_architecture() {
        assert_eq!(
            Family::Cdna2.members(),
            vec![Gpu::Mi250, Gpu::Mi210, Gpu::Mi250x]
        );
        assert_eq!(Family::Cdna3.members(), vec![Gpu::Mi300x, Gpu::Mi325x]);
        assert_eq!(Family::Cdna4.members(), vec![Gpu::Mi355x]);
        assert_eq!(
            Family::Hopper.members(),
            vec![Gpu::H100, Gpu::H200, Gpu::H100Hbm2e]
        );
        assert_eq!(Family::Ampere.members(), vec![Gpu::A100]);
        assert_eq!(Family::Blackwell.members(), vec![Gpu::B200]);
        // Every kind belongs to exactly one listed family; members share vendor and FP8 support.
        for g in Gpu::ALL {
            let f = g.family();
            assert_eq!(Family::ALL.iter().filter(|x| **x == f).count(), 1, "{g}");
            for m in f.members() {
                assert_eq!(m.is_amd(), g.is_amd(), "{g} {m}");
                assert_eq!(m.has_fp8(), g.has_fp8(), "{g} {m}");
            }
        }
        assert_eq!(Family::Cdna3.to_string(), "cdna3");
    }

    #[test]
    fn gcd_kinds_are_half_a_package() {
        let gcds: Vec<Gpu> = Gpu::ALL.into_iter().filter(|g| g.is_gcd()).collect();
        assert_eq!(gcds, [Gpu::Mi250, Gpu::Mi250x]);
        // A GCD kind has half its package's memory: 64 of the 128 GiB.
        for g in gcds {
            assert_eq!(g.spec().hbm_bytes, 64 << 30, "{g}");
        }
    }

    #[test]
    fn parses_names_and_rejects_others() {
        assert_eq!("MI300X".parse::<Gpu>().unwrap(), Gpu::Mi300x);
        let e = "v100".parse::<Gpu>().unwrap_err();
        assert!(e.to_string().contains("unknown GPU kind `v100`"));
    }

    #[test]
    fn csv_quotes() {
        assert_eq!(split_csv_line(r#"a,"b,c",d"#), vec!["a", "b,c", "d"]);
    }
}
