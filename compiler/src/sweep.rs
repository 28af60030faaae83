//! `moai-compile sweep`: the best plan of one model on a range of cluster flavors.
