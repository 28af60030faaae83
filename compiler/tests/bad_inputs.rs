//! Bad-input matrix (see below).
