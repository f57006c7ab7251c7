// The man pages and the shell completions, generated from the command line's own clap
// definitions (src/cli.rs) and from the README's reference tables (src/manual.rs reads
// them), so that none of them is a second copy to keep up to date by hand.
//
// They are written to OUT_DIR, and copied to target/generated/ under the package: cargo
// gives OUT_DIR a hashed name no packaging tool can name, and cargo-deb's assets
// (Cargo.toml, [package.metadata.deb]) need a path that stays the same.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::{env, fs};

use clap::CommandFactory;
use clap_complete::Shell;
use roff::{Roff, bold, italic, roman};

// what src/cli.rs takes from the core: `route --ports`'s values
#[allow(dead_code)]
mod core {
    pub mod ruleset {
        include!("src/core/ruleset/open.rs");
    }
}

#[allow(dead_code)]
mod cli {
    include!("src/cli.rs");
}

#[allow(dead_code)]
mod manual {
    include!("src/manual.rs");
}

const NAME: &str = "repmgr-nat";

fn main() -> io::Result<()> {
    for input in ["build.rs", "src/cli.rs", "src/core/ruleset/open.rs", "src/manual.rs", "README.md"] {
        println!("cargo::rerun-if-changed={input}");
    }
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let (man, completions) = (out.join("man"), out.join("completions"));
    fs::create_dir_all(&man)?;
    fs::create_dir_all(&completions)?;

    let cmd = cli::Cli::command();
    // one page per command (repmgr-nat-route.1, ...), then the main page over clap's own
    clap_mangen::generate_to(cmd.clone(), &man)?;
    let readme = fs::read_to_string("README.md")?;
    let mut page = Vec::new();
    main_page(&clap_mangen::Man::new(cmd.clone().disable_help_subcommand(true)), &readme, &mut page)?;
    fs::write(man.join(format!("{NAME}.1")), page)?;

    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(shell, &mut cmd.clone(), NAME, &completions)?;
    }

    let stable = Path::new(&env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it")).join("target/generated");
    for dir in ["man", "completions"] {
        copy_dir(&out.join(dir), &stable.join(dir))?;
    }
    Ok(())
}

/// clap's sections (name, synopsis, description, options, commands), then what only the
/// README knows: the configuration keys, the exit codes, the files.
fn main_page(man: &clap_mangen::Man, readme: &str, w: &mut dyn Write) -> io::Result<()> {
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
        ("/etc/sudoers.d/repmgr-nat", "what repmgr's OS user may run as root and as barman"),
        ("/var/lib/repmgr-nat", "the recorded route and the run lock (state.dir)"),
        ("/run/repmgr-nat", "what watch saw last, the events' counts, receive-wal's output (watch.dir)"),
        ("/usr/lib/systemd/system/repmgr-nat-setup.service", "the boot step (setup)"),
        ("/usr/lib/systemd/system/repmgr-nat-watch.service", "the service (watch)"),
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

fn copy_dir(from: &Path, to: &Path) -> io::Result<()> {
    fs::create_dir_all(to)?;
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        fs::copy(entry.path(), to.join(entry.file_name()))?;
    }
    Ok(())
}
