//! Two components with one name: the second library's registration is refused
//! with both origins named, and nothing of it is installed. Its own binary, so
//! that the process-wide registries of the other plugin tests stay clean.

use std::path::{Path, PathBuf};

use lora_plugin_host::{Request, load_all};

fn library() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let name = format!(
        "{}example_salt_pepper{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    );
    let path = target.join("plugins").join(name);
    assert!(
        path.is_file(),
        "{} is missing: run `cargo xtask build-plugins`",
        path.display()
    );
    path
}

#[test]
fn a_second_library_with_the_same_names_is_refused_naming_both() {
    let original = library();
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join(original.file_name().unwrap());
    std::fs::copy(&original, &copy).unwrap();
    let request = |path: &Path| Request {
        path: path.to_path_buf(),
        location: None,
    };
    let (ok, errors) = load_all(&[request(&original)]);
    assert_eq!((ok.len(), errors.len()), (1, 0), "{errors:?}");
    assert_eq!(ok[0].contributions.len(), 3);
    let (ok, errors) = load_all(&[request(&copy)]);
    assert!(ok.is_empty());
    let message = errors[0].to_string();
    let original = std::fs::canonicalize(&original).unwrap();
    let copy = std::fs::canonicalize(&copy).unwrap();
    for expected in [
        format!(
            "two rules named `salt-pepper::amount-range`: one from {}, one from {}",
            original.display(),
            copy.display()
        ),
        format!(
            "two augmentations named `salt-pepper`: one from {}, one from {}",
            original.display(),
            copy.display()
        ),
        format!(
            "two callbacks named `csv-loss-log`: one from {}, one from {}",
            original.display(),
            copy.display()
        ),
    ] {
        assert!(message.contains(&expected), "{message}\nlacks\n{expected}");
    }
    // Nothing of the refused library was installed.
    let rules = lora_core::rules::rules();
    assert_eq!(rules.iter().filter(|r| r.id == "salt-pepper::amount-range").count(), 1);
    assert!(lora_core::registry::all_duplicates().is_empty());
}

#[test]
fn the_components_linked_into_this_binary_have_unique_names() {
    // No duplicates among the components linked into this binary.
    assert_eq!(lora_core::registry::all_duplicates(), Vec::<String>::new());
}
