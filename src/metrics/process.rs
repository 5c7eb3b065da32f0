//! process: the standard Prometheus process metrics (resident and virtual memory, CPU
//! seconds, threads, open and maximum file descriptors, start time), read from /proc at
//! each scrape and appended to the exposition as text (CPU seconds are a fractional
//! counter, which the recorder's integer counters cannot hold), so that the sidecar's own
//! cost shows on the dashboard beside its traffic. Linux only; elsewhere they are absent.

use std::fmt::Write;

/// The process metrics in Prometheus text format (empty where /proc is absent).
pub(super) fn render() -> String {
    let mut out = String::new();
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else { return out };
    // Fields after the command name, which is in parentheses and may hold spaces.
    let Some((_, after)) = stat.rsplit_once(')') else { return out };
    let f: Vec<&str> = after.split_whitespace().collect();
    let field = |i: usize| f.get(i - 3).and_then(|v| v.parse::<u64>().ok());
    // SAFETY: sysconf reads a configuration value; it has no preconditions.
    let (ticks, page) = unsafe { (libc::sysconf(libc::_SC_CLK_TCK), libc::sysconf(libc::_SC_PAGESIZE)) };
    let (ticks, page) = (ticks.max(1) as f64, page.max(1) as f64);
    let mut put = |name: &str, kind: &str, help: &str, value: f64| {
        let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n");
    };
    if let (Some(utime), Some(stime)) = (field(14), field(15)) {
        put("process_cpu_seconds_total", "counter", "User and system CPU time spent in seconds.", (utime + stime) as f64 / ticks);
    }
    if let Some(threads) = field(20) {
        put("process_threads", "gauge", "Operating-system threads of the process.", threads as f64);
    }
    if let Some(vsize) = field(23) {
        put("process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.", vsize as f64);
    }
    if let Some(rss) = field(24) {
        put("process_resident_memory_bytes", "gauge", "Resident memory size in bytes.", rss as f64 * page);
    }
    if let (Some(start), Some(boot)) = (field(22), boot_time()) {
        put("process_start_time_seconds", "gauge", "Start time of the process since the Unix epoch in seconds.", boot + start as f64 / ticks);
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        put("process_open_fds", "gauge", "Open file descriptors.", fds.count() as f64);
    }
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
        put("process_max_fds", "gauge", "The limit on open file descriptors.", lim.rlim_cur as f64);
    }
    out
}

/// Boot time in seconds since the epoch (/proc/stat `btime`).
fn boot_time() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    stat.lines().find_map(|l| l.strip_prefix("btime ")).and_then(|v| v.trim().parse().ok())
}
