//! HTTP caching: Cache-Control presets, ETags and conditional GET
//! (RFC 9110, section 13), on the `headers` crate's typed headers.
