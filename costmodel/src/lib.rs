//! moai-costmodel.
