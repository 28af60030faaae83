//! Model statistics: parameter counts and bytes by dtype, op histograms, forward FLOPs per token.
