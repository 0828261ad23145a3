//! What the benchmarks read of the machine they run on.

/// The machine's CPU time so far, in clock ticks: all of it, and what the
/// hypervisor gave to other machines (steal), from `/proc/stat`; none where
/// that file cannot be read.
pub fn cpu_times() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let fields: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is in user).
    Some((fields.iter().take(8).sum(), *fields.get(7)?))
}

/// The share of the machine's CPU time stolen between two readings, in
/// percent: on a shared virtual machine, what makes figures noisy.
pub fn stolen_share(before: Option<(u64, u64)>, after: Option<(u64, u64)>) -> Option<f64> {
    let ((total0, steal0), (total1, steal1)) = (before?, after?);
    let total = total1.checked_sub(total0).filter(|t| *t > 0)?;
    Some(100.0 * steal1.saturating_sub(steal0) as f64 / total as f64)
}
