//! Facts about this machine: cores, memory, GPUs. Read from `/proc` on Linux;
//! elsewhere the memory figures are unknown and the memory rules stay silent.

use lora_core::rules::MachineFacts;

pub fn facts() -> MachineFacts {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let field = |name: &str| -> Option<u64> {
        let line = meminfo.lines().find(|l| l.starts_with(name))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    };
    MachineFacts {
        cores: std::thread::available_parallelism().map_or(1, usize::from),
        total_memory_bytes: field("MemTotal:"),
        available_memory_bytes: field("MemAvailable:"),
        gpus: nvidia_gpus(),
    }
}

/// GPUs that the NVIDIA driver lists, by model name.
fn nvidia_gpus() -> Vec<String> {
    let Ok(dir) = std::fs::read_dir("/proc/driver/nvidia/gpus") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read_to_string(e.path().join("information")).ok())
        .filter_map(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("Model:").map(|m| m.trim().to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn this_machine_has_cores_and_memory() {
        let m = super::facts();
        assert!(m.cores >= 1);
        if cfg!(target_os = "linux") {
            let total = m.total_memory_bytes.unwrap();
            assert!(total > 1 << 28, "{total}");
            assert!(m.available_memory_bytes.unwrap() <= total);
        }
    }
}
