//! `hangar-jail`: builds one sandbox from a JSON config on stdin and monitors its init.
//! Started only by the local runtime; see `hangar_sandbox::jail`.

fn main() {
    hangar_sandbox::jail::main()
}
