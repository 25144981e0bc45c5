//! `escape-probe OP [ARG]`: attempts one operation a sandbox must not be able to do and
//! prints `ok` if it succeeded or `err <errno>` if the kernel refused it.

use std::ffi::CString;

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn c(s: &str) -> CString {
    CString::new(s).unwrap_or_default()
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let op = args.first().map(String::as_str).unwrap_or("");
    let arg = args.get(1).cloned().unwrap_or_default();
    // SAFETY: each arm makes one system call with valid, NUL-terminated arguments; the
    // probe exists to see whether the kernel allows it.
    let r: i64 = unsafe {
        match op {
            "mount" => libc::mount(
                c("none").as_ptr(),
                c("/mnt").as_ptr(),
                c("tmpfs").as_ptr(),
                0,
                std::ptr::null(),
            ) as i64,
            "remount-root" => libc::mount(
                std::ptr::null(),
                c("/").as_ptr(),
                std::ptr::null(),
                libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY,
                std::ptr::null(),
            ) as i64,
            "umount-proc" => libc::umount2(c("/proc").as_ptr(), libc::MNT_DETACH) as i64,
            "load-module" => {
                let fd = libc::open(c("/dev/null").as_ptr(), libc::O_RDONLY);
                libc::syscall(libc::SYS_finit_module, fd, c("").as_ptr(), 0)
            }
            // Ctrl-Alt-Del off: harmless even if it were allowed.
            "reboot" => libc::reboot(libc::RB_DISABLE_CAD) as i64,
            "set-clock" => {
                let mut ts: libc::timespec = std::mem::zeroed();
                libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts);
                libc::clock_settime(libc::CLOCK_REALTIME, &ts) as i64
            }
            "mknod" => libc::mknod(
                c("/tmp/probe-null").as_ptr(),
                libc::S_IFCHR | 0o666,
                libc::makedev(1, 3),
            ) as i64,
            "ptrace" => libc::ptrace(
                libc::PTRACE_ATTACH,
                arg.parse::<libc::pid_t>().unwrap_or(1),
                0,
                0,
            ),
            "kill" => libc::kill(arg.parse::<libc::pid_t>().unwrap_or(1), 0) as i64,
            "unshare-user" => libc::unshare(libc::CLONE_NEWUSER) as i64,
            "unshare-net" => libc::unshare(libc::CLONE_NEWNET) as i64,
            "bpf" => libc::syscall(libc::SYS_bpf, 0, std::ptr::null::<u8>(), 0),
            "keyctl" => libc::syscall(
                libc::SYS_add_key,
                c("user").as_ptr(),
                c("k").as_ptr(),
                c("v").as_ptr(),
                1,
                -2,
            ),
            "connect-tcp" | "tcp-read" => {
                // ARG is ip:port (IPv4). Connects with a 2 s timeout; `tcp-read` then
                // prints what the server sends (up to 256 bytes) after `ok`.
                let (ip, port) = arg.split_once(':').unwrap_or(("127.0.0.1", "1"));
                let ip: std::net::Ipv4Addr = ip.parse().unwrap_or(std::net::Ipv4Addr::LOCALHOST);
                let s = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_NONBLOCK, 0);
                let mut addr: libc::sockaddr_in = std::mem::zeroed();
                addr.sin_family = libc::AF_INET as u16;
                addr.sin_port = port.parse::<u16>().unwrap_or(1).to_be();
                addr.sin_addr.s_addr = u32::from(ip).to_be();
                let r = libc::connect(
                    s,
                    &addr as *const _ as *const libc::sockaddr,
                    std::mem::size_of::<libc::sockaddr_in>() as u32,
                );
                let r = if r < 0 && errno() == libc::EINPROGRESS {
                    let mut pfd = libc::pollfd {
                        fd: s,
                        events: libc::POLLOUT,
                        revents: 0,
                    };
                    if libc::poll(&mut pfd, 1, 2000) == 0 {
                        println!("err {}", libc::ETIMEDOUT);
                        return;
                    }
                    let mut err: libc::c_int = 0;
                    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
                    libc::getsockopt(
                        s,
                        libc::SOL_SOCKET,
                        libc::SO_ERROR,
                        (&mut err as *mut libc::c_int).cast(),
                        &mut len,
                    );
                    if err != 0 {
                        println!("err {err}");
                        return;
                    }
                    0
                } else {
                    r
                };
                if r == 0 && op == "tcp-read" {
                    let mut pfd = libc::pollfd {
                        fd: s,
                        events: libc::POLLIN,
                        revents: 0,
                    };
                    libc::poll(&mut pfd, 1, 2000);
                    let mut b = [0u8; 256];
                    let n = libc::read(s, b.as_mut_ptr().cast(), b.len());
                    println!(
                        "ok {}",
                        String::from_utf8_lossy(&b[..n.max(0) as usize]).trim()
                    );
                    return;
                }
                r as i64
            }
            "connect-unix" => {
                let s = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
                let mut addr: libc::sockaddr_un = std::mem::zeroed();
                addr.sun_family = libc::AF_UNIX as u16;
                for (i, b) in arg.bytes().take(107).enumerate() {
                    addr.sun_path[i] = b as libc::c_char;
                }
                libc::connect(
                    s,
                    &addr as *const _ as *const libc::sockaddr,
                    std::mem::size_of::<libc::sockaddr_un>() as u32,
                ) as i64
            }
            "write" => {
                let fd = libc::open(
                    c(&arg).as_ptr(),
                    libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC,
                    0o644,
                );
                if fd < 0 {
                    -1
                } else {
                    libc::write(fd, b"escaped".as_ptr().cast(), 7) as i64
                }
            }
            "read" => {
                let fd = libc::open(c(&arg).as_ptr(), libc::O_RDONLY);
                if fd < 0 {
                    -1
                } else {
                    let mut b = [0u8; 16];
                    libc::read(fd, b.as_mut_ptr().cast(), 16) as i64
                }
            }
            "alloc" => {
                // Touches ARG MiB, one page at a time.
                let mib: usize = arg.parse().unwrap_or(1024);
                let mut v: Vec<Vec<u8>> = Vec::new();
                for _ in 0..mib {
                    v.push(vec![1u8; 1 << 20]);
                }
                v.len() as i64
            }
            _ => {
                eprintln!("escape-probe: unknown op {op:?}");
                std::process::exit(2)
            }
        }
    };
    if r < 0 {
        println!("err {}", errno());
    } else {
        println!("ok");
    }
}
