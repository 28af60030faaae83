//! moai-costmodel: devices, links, clusters and the flavor catalog; op costs from measured profiles
//! with a roofline fallback; α-β collectives; the memory model; pipeline schedule simulation; the
//! estimator behind `moai-compile estimate`, and `validate` against measured truth files.
//!
//! ```
//! use moai_costmodel::{Cluster, Gpu};
//! let c = Cluster::from_flavor("4xLarge.2048GB", Gpu::Mi250).unwrap();
//! assert_eq!((c.devices, c.servers), (32, 4));
//! ```

#![warn(missing_docs)]
#![allow(clippy::neg_cmp_op_on_partial_ord)] // `!(x > 0.0)` deliberately rejects NaN too.

mod blocks;
pub mod bounds;
pub mod cluster;
mod collective;
pub mod config;
mod context;
mod data_parallel;
mod device;
pub mod efficiency;
mod error;
pub mod estimate;
pub mod fit;
pub mod flavor;
pub mod known_misses;
pub mod memory;
pub mod moe;
pub mod offload;
mod ops;
pub mod pipeline;
pub mod precision;
pub mod profile;
pub mod runtime_memory;
mod stack;
pub mod validate;

pub use blocks::BlockCost;
pub use bounds::LowerBounds;
pub use cluster::{Cluster, Link, Links};
pub use config::{CpComm, ParallelConfig, Recompute, Schedule, check_tp_dims, micro_batches_for};
pub use device::{DeviceSpec, Family, Gpu};
pub use efficiency::{Allocator, Efficiency, EfficiencyFile, StackCoefficients};
pub use error::{CostError, Result};
pub use estimate::{Breakdown, CostModel, Estimate, KernelClasses, ProfiledCostModel, SourceNotes};
pub use flavor::{FlavorRow, flavors, render_flavors, render_flavors_marked};
pub use memory::StageMemory;
pub use ops::{ATTENTION_DROPOUT_THROUGHPUT, Source};
pub use precision::MatmulPrecision;
pub use profile::OpProfile;
pub use runtime_memory::{RuntimeMemory, runtime_memory};
pub use stack::{AttentionKernel, OverlapSwitch, Stack};
pub use validate::{TruthRow, ValidationReport, validate};
