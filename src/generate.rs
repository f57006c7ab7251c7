//! `repmgr-nat generate DIR`: the man pages and the shell completions, rendered by the
//! program itself from its own command line (`cli.rs`) and from the README's reference
//! tables (`manual.rs` reads them), so that none of them is a second copy to keep up to date
//! by hand. `packaging/deb` runs it before it builds the package. It is the packaging's,
//! not a user's: outside the command line the pages and the completions show.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{CommandFactory, Parser};
use clap_complete::Shell;
use roff::{Roff, bold, italic, roman};

use crate::cli::Cli;
use crate::manual;

const NAME: &str = "repmgr-nat";

/// Writes the man pages (DIR/man) and the shell completions (DIR/completions).
#[derive(Parser)]
#[command(name = "repmgr-nat generate")]
struct Args {
    /// Where to write them
    dir: PathBuf,
}

/// `repmgr-nat generate DIR`.
pub fn main() -> ExitCode {
    crate::logging::init(log::LevelFilter::Info);
    let name = std::ffi::OsString::from("repmgr-nat generate");
    let args = Args::parse_from(std::iter::once(name).chain(std::env::args_os().skip(2)));
    match write(&args.dir) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("generate: {e:#}");
            ExitCode::from(crate::exit::FAILED)
        }
    }
}
const README: &str = include_str!("../README.md");

/// Writes `dir/man/*.1` (one page per command, and the main page) and
/// `dir/completions/` (bash, zsh, fish).
pub fn write(dir: &Path) -> Result<()> {
    let (man, completions) = (dir.join("man"), dir.join("completions"));
    for dir in [&man, &completions] {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let cmd = Cli::command();
    // one page per command (repmgr-nat-route.1, ...), then the main page over clap's own
    clap_mangen::generate_to(cmd.clone(), &man).with_context(|| format!("cannot write into {}", man.display()))?;
    let path = man.join(format!("{NAME}.1"));
    std::fs::write(&path, main_page()?).with_context(|| format!("cannot write {}", path.display()))?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(shell, &mut cmd.clone(), NAME, &completions)
            .with_context(|| format!("cannot write into {}", completions.display()))?;
    }
    Ok(())
}

/// The main page, `repmgr-nat.1`.
pub fn main_page() -> Result<Vec<u8>> {
    let mut page = Vec::new();
    render_main_page(&clap_mangen::Man::new(Cli::command().disable_help_subcommand(true)), README, &mut page)?;
    Ok(page)
}

/// clap's sections (name, synopsis, description, options, commands), then what only the
/// README knows: the configuration keys, the exit codes, the files.
fn render_main_page(man: &clap_mangen::Man, readme: &str, w: &mut dyn Write) -> io::Result<()> {
    man.render_title(w)?;
    man.render_name_section(w)?;
    man.render_synopsis_section(w)?;
    man.render_description_section(w)?;
    man.render_options_section(w)?;
    man.render_subcommands_section(w)?;

    let mut roff = Roff::new();
    roff.control("SH", ["CONFIGURATION"]);
    roff.text([
        roman("The configuration is read from "),
        bold("/etc/repmgr-nat.toml"),
        roman(" (other commands than "),
        bold("route"),
        roman(" accept "),
        bold("--config"),
        roman(" or "),
        bold("REPMGR_NAT_CONFIG"),
        roman("). Unknown keys are errors. The keys, their defaults and their meaning:"),
    ]);
    for row in manual::table(readme, manual::CONFIG_HEADING) {
        let [key, default, meaning] = &row[..] else { continue };
        roff.control("TP", []);
        // "required", "none", or a value: "(default: 250)"
        let default =
            if default.contains('`') { format!("default: {}", manual::plain(default)) } else { manual::plain(default) };
        roff.text([bold(manual::plain(key)), roman(format!(" ({default})"))]);
        roff.text(inline(meaning));
    }

    roff.control("SH", ["EXIT STATUS"]);
    for row in manual::table(readme, manual::EXIT_HEADING) {
        let [code, meaning] = &row[..] else { continue };
        roff.control("TP", []);
        roff.text([bold(manual::plain(code))]);
        roff.text(inline(meaning));
    }

    roff.control("SH", ["FILES"]);
    for (path, what) in [
        ("/etc/repmgr-nat.toml", "the configuration (root's, mode 0644)"),
        ("/etc/repmgr-nat/NAME.toml", "the configuration of instance NAME (--instance NAME), one per further cluster"),
        ("/etc/sudoers.d/repmgr-nat", "what repmgr's OS user may run as root and as barman"),
        ("/var/lib/repmgr-nat", "the recorded route and the run lock (state.dir)"),
        ("/run/repmgr-nat", "what watch saw last, the events' counts, receive-wal's output (watch.dir)"),
        ("/usr/lib/systemd/system/repmgr-nat-setup.service", "the boot step (setup)"),
        ("/usr/lib/systemd/system/repmgr-nat-watch.service", "the service (watch)"),
        ("/usr/lib/systemd/system/repmgr-nat-setup@.service", "the boot step of instance %i"),
        ("/usr/lib/systemd/system/repmgr-nat-watch@.service", "the service of instance %i"),
    ] {
        roff.control("TP", []);
        roff.text([italic(path)]);
        roff.text([roman(what)]);
    }

    roff.control("SH", ["SEE ALSO"]);
    roff.text([roman(
        "repmgr(1), barman(1), iptables(8), conntrack(8), sudoers(5), and /usr/share/doc/repmgr-nat/README.md: how \
         it works, the failure policy, security, the metrics and the status --json schema.",
    )]);
    roff.to_writer(w)?;
    man.render_version_section(w)
}

/// A README cell as roff text: code spans in bold.
fn inline(cell: &str) -> Vec<roff::Inline> {
    manual::spans(cell).into_iter().map(|(text, code)| if code { bold(text) } else { roman(text) }).collect()
}
