//! The byte budget of the memories kept between turns (`--memory-pool-bytes`): a size as a user
//! writes one ("2GiB", "512MB", "1500000000"), and the default, half the memory this process may
//! use (its cgroup's limit in a container, else the machine's RAM).

use std::fs;

/// Bytes per unit suffix, matched without regard to case; a bare number is bytes.
const UNITS: [(&str, u64); 9] = [
    ("kib", 1 << 10),
    ("mib", 1 << 20),
    ("gib", 1 << 30),
    ("tib", 1 << 40),
    ("kb", 1_000),
    ("mb", 1_000_000),
    ("gb", 1_000_000_000),
    ("tb", 1_000_000_000_000),
    ("b", 1),
];

/// Fallback when neither a cgroup limit nor `/proc/meminfo` can be read.
const FALLBACK_BYTES: u64 = 4 << 30;

/// A size in bytes from `text`: a whole or decimal number, optionally followed by a unit (`B`,
/// `KB`/`MB`/`GB`/`TB` in powers of 1000, `KiB`/`MiB`/`GiB`/`TiB` in powers of 1024).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    let lower = trimmed.to_ascii_lowercase();
    let (number, unit) = UNITS
        .iter()
        .find_map(|&(suffix, unit)| lower.strip_suffix(suffix).map(|n| (n.trim(), unit)))
        .unwrap_or((lower.as_str(), 1));
    let value: f64 = number
        .parse()
        .ok()
        .filter(|v: &f64| v.is_finite() && *v >= 0.0)
        .ok_or_else(|| {
            format!("{trimmed:?} is not a size: write bytes, or a number with a unit such as 512MiB or 2GB")
        })?;
    let bytes = value * unit as f64;
    if bytes >= u64::MAX as f64 {
        return Err(format!("{trimmed:?} is larger than any memory"));
    }
    Ok(bytes.round() as u64)
}

/// Half the memory this process may use: the pool shares it with the model, the turns running
/// and the allocator's slack.
pub fn default_budget() -> u64 {
    usable_memory().map_or(FALLBACK_BYTES, |bytes| bytes / 2)
}

/// The smaller of the cgroup's memory limit (v2, else v1) and the machine's RAM.
fn usable_memory() -> Option<u64> {
    let cgroup = [
        "/sys/fs/cgroup/memory.max",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
    ]
    .iter()
    .find_map(|path| fs::read_to_string(path).ok()?.trim().parse::<u64>().ok());
    let ram = fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| mem_total(&text));
    match (cgroup, ram) {
        (Some(limit), Some(ram)) => Some(limit.min(ram)),
        (limit, ram) => limit.or(ram),
    }
}

/// `MemTotal` of a `/proc/meminfo` text, in bytes.
fn mem_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_users_write_them() {
        assert_eq!(parse_size("1500000000"), Ok(1_500_000_000));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("2 gib"), Ok(2 << 30));
        assert_eq!(parse_size("512MB"), Ok(512_000_000));
        assert_eq!(parse_size("1.5KiB"), Ok(1536));
        assert_eq!(parse_size("0"), Ok(0));
        for bad in ["", "lots", "-1GiB", "2XB", "1e30TiB"] {
            let error = parse_size(bad).expect_err(bad);
            assert!(error.contains(bad.trim()), "{error}");
        }
    }

    #[test]
    fn ram_is_read_from_meminfo() {
        let meminfo = "MemFree:  100 kB\nMemTotal:       16384 kB\n";
        assert_eq!(mem_total(meminfo), Some(16 << 20));
        assert_eq!(mem_total("nothing here"), None);
        assert!(default_budget() > 0);
    }
}
