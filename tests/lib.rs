//! Integration tests live in `candle.rs` (one file per backend) and `suite/`
//! (the checks every backend must pass). This library is empty on purpose.
