//! Conversion of candle's errors into the core's error enum.

pub(crate) trait IntoCore<T> {
    fn core(self) -> lora_core::Result<T>;
}

impl<T> IntoCore<T> for candle_core::Result<T> {
    fn core(self) -> lora_core::Result<T> {
        self.map_err(|e| lora_core::Error::Backend {
            backend: crate::BACKEND,
            message: e.to_string(),
        })
    }
}
