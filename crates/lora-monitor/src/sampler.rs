//! CPU, memory and GPU figures, sampled on a thread of their own so that the
//! training loop never waits for them. GPU figures come from `nvidia-smi`
//! when it exists; there are none otherwise.

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sysinfo::{CpuRefreshKind, MemoryRefreshKind, Pid, ProcessRefreshKind, ProcessesToUpdate, RefreshKind, System};

use crate::record::gpu_key;

pub struct Sampler {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Sampler {
    /// Starts sampling every `interval`; `sink` receives (seconds since `start`, figures).
    pub fn start(interval: Duration, start: Instant, sink: impl Fn(f64, Vec<(String, f64)>) + Send + 'static) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("lora-monitor-sampler".into())
            .spawn(move || {
                let mut probe = Probe::new();
                let gpu = has_nvidia_smi();
                while !flag.load(Ordering::Relaxed) {
                    // Sleep in short slices so that stopping is prompt.
                    let until = Instant::now() + interval;
                    while Instant::now() < until && !flag.load(Ordering::Relaxed) {
                        std::thread::sleep(Duration::from_millis(50).min(interval));
                    }
                    let mut figures = probe.sample();
                    if gpu {
                        figures.extend(gpu_figures());
                    }
                    sink(start.elapsed().as_secs_f64(), figures);
                }
            })
            .ok();
        Self { stop, thread }
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Probe {
    sys: System,
    pid: Option<Pid>,
}

impl Probe {
    fn new() -> Self {
        let sys = System::new_with_specifics(
            RefreshKind::nothing()
                .with_cpu(CpuRefreshKind::nothing().with_cpu_usage())
                .with_memory(MemoryRefreshKind::nothing().with_ram()),
        );
        Self {
            sys,
            pid: sysinfo::get_current_pid().ok(),
        }
    }

    fn sample(&mut self) -> Vec<(String, f64)> {
        self.sys.refresh_cpu_usage();
        self.sys
            .refresh_memory_specifics(MemoryRefreshKind::nothing().with_ram());
        let mut out = vec![
            ("system_cpu_percent".to_string(), self.sys.global_cpu_usage() as f64),
            ("system_memory_used_bytes".to_string(), self.sys.used_memory() as f64),
            ("system_memory_total_bytes".to_string(), self.sys.total_memory() as f64),
        ];
        if let Some(pid) = self.pid {
            self.sys.refresh_processes_specifics(
                ProcessesToUpdate::Some(&[pid]),
                true,
                ProcessRefreshKind::nothing().with_cpu().with_memory(),
            );
            if let Some(p) = self.sys.process(pid) {
                out.push(("process_cpu_percent".into(), p.cpu_usage() as f64));
                out.push(("process_rss_bytes".into(), p.memory() as f64));
            }
        }
        out
    }
}

fn has_nvidia_smi() -> bool {
    Command::new("nvidia-smi")
        .arg("--list-gpus")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Utilisation and memory of each GPU, from `nvidia-smi`'s CSV output.
fn gpu_figures() -> Vec<(String, f64)> {
    let Ok(out) = Command::new("nvidia-smi")
        .args([
            "--query-gpu=utilization.gpu,memory.used,memory.total",
            "--format=csv,noheader,nounits",
        ])
        .output()
    else {
        return Vec::new();
    };
    parse_gpu_csv(&String::from_utf8_lossy(&out.stdout))
}

fn parse_gpu_csv(text: &str) -> Vec<(String, f64)> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let f: Vec<Option<f64>> = line.split(',').map(|x| x.trim().parse().ok()).collect();
        if let [Some(util), Some(used), Some(total)] = f[..] {
            const MIB: f64 = 1024.0 * 1024.0;
            out.push((gpu_key("gpu_utilization_percent", i), util));
            out.push((gpu_key("gpu_memory_used_bytes", i), used * MIB));
            out.push((gpu_key("gpu_memory_total_bytes", i), total * MIB));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nvidia_smi_lines_become_labelled_figures() {
        let f = parse_gpu_csv("37, 1024, 81920\nnot a number\n");
        assert_eq!(f.len(), 3);
        assert_eq!(f[0], ("gpu_utilization_percent{gpu=\"0\"}".to_string(), 37.0));
        assert_eq!(f[1].1, 1024.0 * 1024.0 * 1024.0);
    }

    #[test]
    fn the_probe_sees_this_process() {
        let mut p = Probe::new();
        let f = p.sample();
        let rss = f.iter().find(|(k, _)| k == "process_rss_bytes").map(|(_, v)| *v);
        assert!(rss.unwrap_or(0.0) > 0.0, "{f:?}");
    }
}
