//! The process's open-file limit: every connection, stored file and upstream socket takes a
//! descriptor, and the connection cap's default is derived from this limit.

/// The soft RLIMIT_NOFILE, None where it cannot be read.
pub fn open_file_limit() -> Option<u64> {
    #[cfg(target_os = "linux")]
    {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit only writes the struct it is given.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
            return Some(limit.rlim_cur);
        }
    }
    None
}

/// Raises the soft open-file limit to the hard one, as every Go program (Distribution among
/// them) does at start: systemd and many shells leave the soft limit at 1024 while allowing far
/// more. Returns (before, after) when it changed.
pub fn raise_open_file_limit() -> Option<(u64, u64)> {
    #[cfg(target_os = "linux")]
    {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit and setrlimit only read and write the struct they are given.
        unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0
                || limit.rlim_cur >= limit.rlim_max
            {
                return None;
            }
            let before = limit.rlim_cur;
            limit.rlim_cur = limit.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                return Some((before, limit.rlim_cur));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_limit_is_raised_to_the_hard_one() {
        raise_open_file_limit();
        #[cfg(target_os = "linux")]
        {
            let mut limit = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            assert_eq!(
                unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) },
                0
            );
            assert_eq!(limit.rlim_cur, limit.rlim_max);
            assert_eq!(open_file_limit(), Some(limit.rlim_max));
        }
    }
}
