// Which proxy ports forward to the node: the core's value, and `route --ports`'s.
//
// Self-contained (clap only): build.rs includes it with src/cli.rs, for the man pages.

/// Which proxy ports forward to the node. The SNAT rule for the node is present in
/// every case, so a route always names exactly one node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Open {
    /// Neither port forwards: both refuse connections.
    None,
    /// Only barman's port forwards; the application port refuses connections.
    Barman,
    /// barman's port and every application port forward.
    All,
}
