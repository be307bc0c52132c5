//! Reading a broker's CPU time and resident memory from `/proc`.

use anyhow::{anyhow, Context, Result};

/// Total user + system CPU time of the process, in clock ticks, taken from
/// the text of `/proc/<pid>/stat` (fields 14 `utime` and 15 `stime`).
///
/// The command name (field 2) is in parentheses and may itself contain
/// spaces or parentheses, so fields are counted from the last `)`.
pub fn parse_stat_cpu_ticks(stat: &str) -> Result<u64> {
    let close = stat
        .rfind(')')
        .ok_or_else(|| anyhow!("no ')' after the command name in /proc stat"))?;
    // After ")" the fields start at number 3 (state), so field N is index N - 3.
    let mut fields = stat[close + 1..].split_whitespace();
    let utime = fields
        .nth(14 - 3)
        .ok_or_else(|| anyhow!("stat has no utime field"))?;
    let stime = fields
        .next()
        .ok_or_else(|| anyhow!("stat has no stime field"))?;
    let utime: u64 = utime.parse().context("utime is not a number")?;
    let stime: u64 = stime.parse().context("stime is not a number")?;
    Ok(utime + stime)
}

/// Resident set size in KiB, from the `VmRSS:` line of `/proc/<pid>/status`.
pub fn parse_vmrss_kib(status: &str) -> Result<u64> {
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .ok_or_else(|| anyhow!("no VmRSS line in /proc status"))?;
    let mut parts = line.split_whitespace();
    let value = parts.next().ok_or_else(|| anyhow!("VmRSS has no value"))?;
    match parts.next() {
        Some("kB") => {}
        other => return Err(anyhow!("unexpected VmRSS unit {other:?}")),
    }
    value.parse().context("VmRSS is not a number")
}

/// Clock ticks per second, as `getconf CLK_TCK` reports.
pub fn clock_ticks_per_second() -> Result<u64> {
    // SAFETY: sysconf has no preconditions and only reads a constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(ticks)
        .ok()
        .filter(|&t| t > 0)
        .ok_or_else(|| anyhow!("sysconf(_SC_CLK_TCK) failed"))
}

/// CPU seconds (user + system) the process has consumed so far.
pub fn cpu_seconds(pid: u32, ticks_per_second: u64) -> Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    Ok(parse_stat_cpu_ticks(&text)? as f64 / ticks_per_second as f64)
}

/// Current resident set size of the process in KiB.
pub fn rss_kib(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse_vmrss_kib(&text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_last_paren() {
        // A command name with a space and a ')' inside must not shift fields.
        let stat = "4242 (we ird) x) S 1 4242 4242 0 -1 4194560 120 0 0 0 \
                    731 269 0 0 20 0 3 0 12345 1000000 250 18446744073709551615";
        assert_eq!(parse_stat_cpu_ticks(stat).unwrap(), 731 + 269);
    }

    #[test]
    fn truncated_stat_is_an_error() {
        assert!(parse_stat_cpu_ticks("1 (mosquitto) S 1 2 3").is_err());
        assert!(parse_stat_cpu_ticks("no parens here").is_err());
    }

    #[test]
    fn vmrss_is_read_in_kib() {
        let status = "Name:\tmosquitto\nVmPeak:\t   9000 kB\nVmRSS:\t    6144 kB\nThreads:\t1\n";
        assert_eq!(parse_vmrss_kib(status).unwrap(), 6144);
        assert!(parse_vmrss_kib("Name:\tx\n").is_err());
        assert!(parse_vmrss_kib("VmRSS:\t12 MB\n").is_err());
    }
}
