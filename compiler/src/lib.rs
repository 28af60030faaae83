//! moai-compiler.
