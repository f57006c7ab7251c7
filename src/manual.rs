//! The README's reference tables, read as data: `generate` renders the configuration keys
//! and the exit codes into the man page from them, so the two never drift apart, and the
//! unit tests below hold them to what the program really accepts and returns.

/// The rows of the first Markdown table under the heading `heading` (a line `## heading`,
/// any level), without its header and delimiter rows: each row's cells, trimmed, `\|`
/// read as `|`.
pub fn table(markdown: &str, heading: &str) -> Vec<Vec<String>> {
    let mut lines = markdown.lines().skip_while(|l| l.trim_start_matches('#').trim() != heading || !l.starts_with('#'));
    lines.next();
    lines
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .skip(2)
        .map(|row| {
            let row = row.trim().trim_start_matches('|').trim_end_matches('|').replace("\\|", "\u{0}");
            row.split('|').map(|cell| cell.trim().replace('\u{0}', "|")).collect()
        })
        .collect()
}

/// A cell's inline Markdown as runs of text, each either code (`` `x` ``) or not; links
/// keep their text only.
pub fn spans(cell: &str) -> Vec<(String, bool)> {
    let mut text = String::new();
    let mut rest = cell;
    // [text](target) -> text
    while let Some(open) = rest.find('[') {
        let link = rest[open..].find("](").zip(rest[open..].find(')'));
        match link {
            Some((mid, close)) if mid < close => {
                text.push_str(&rest[..open]);
                text.push_str(&rest[open + 1..open + mid]);
                rest = &rest[open + close + 1..];
            }
            _ => {
                text.push_str(&rest[..=open]);
                rest = &rest[open + 1..];
            }
        }
    }
    text.push_str(rest);
    text.split('`').enumerate().filter(|(_, s)| !s.is_empty()).map(|(i, s)| (s.to_string(), i % 2 == 1)).collect()
}

/// A cell as plain text: its code spans without their backticks.
pub fn plain(cell: &str) -> String {
    spans(cell).into_iter().map(|(text, _)| text).collect()
}

/// Where the README documents the configuration keys and the exit codes.
pub const CONFIG_HEADING: &str = "Configuration reference";
pub const EXIT_HEADING: &str = "Exit codes";

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::core::config::Config;
    use crate::exit;

    const README: &str = include_str!("../README.md");
    const PACKAGED: &str = include_str!("../packaging/repmgr-nat.toml");
    fn man() -> String {
        String::from_utf8(crate::generate::main_page().unwrap()).unwrap()
    }

    #[test]
    fn reads_a_markdown_table_under_its_heading() {
        let md = "# x\n| a | b |\n|---|---|\n| 0 | no |\n## Codes\n\ntext\n\n| code | meaning |\n|---|---|\n| `1` | a \\| b |\n| 2 | [c](#c) |\n\nafter\n| 9 | not this |\n";
        assert_eq!(table(md, "Codes"), [vec!["`1`", "a | b"], vec!["2", "[c](#c)"]]);
        assert_eq!(
            spans("`nodes.<id>` or [the list](#l), `x`"),
            [("nodes.<id>".to_string(), true), (" or the list, ".to_string(), false), ("x".to_string(), true)]
        );
        assert_eq!(plain("`a` [b]"), "a [b]");
    }

    /// The fields a table of the config accepts, from the parser itself: the names serde
    /// lists when it refuses an unknown one.
    fn fields_refused_with(text: &str) -> Vec<String> {
        let err = format!("{:#}", Config::parse(text).expect_err("an unknown key must be refused"));
        let (_, expected) = err.split_once("expected").unwrap_or_else(|| panic!("no field list in {err:?}"));
        expected.split('`').skip(1).step_by(2).map(str::to_string).collect()
    }

    /// Every key the config parser accepts, as the README names them (`nodes.<id>`).
    fn accepted_keys() -> BTreeSet<String> {
        let mut keys = BTreeSet::new();
        for table in fields_refused_with(&format!("unknown_table = 1\n{PACKAGED}")) {
            if table == "nodes" {
                keys.insert("nodes.<id>".to_string());
                continue;
            }
            let header = format!("[{table}]");
            assert!(PACKAGED.contains(&header), "the packaged example has no {header}");
            for field in fields_refused_with(&PACKAGED.replacen(&header, &format!("{header}\nunknown_key = 1\n"), 1)) {
                keys.insert(format!("{table}.{field}"));
            }
        }
        keys
    }

    fn documented_keys() -> BTreeSet<String> {
        table(README, CONFIG_HEADING).iter().map(|row| plain(&row[0])).collect()
    }

    #[test]
    fn the_readme_documents_every_config_key_the_parser_accepts_and_no_other() {
        let accepted = accepted_keys();
        assert!(accepted.len() > 30 && accepted.contains("watch.metrics"), "{accepted:?}");
        assert_eq!(documented_keys(), accepted);
        // a node's table form
        let fields =
            fields_refused_with(&PACKAGED.replacen("[nodes]", "[nodes]\n9 = { address = \"10.8.9.1\", x = 1 }", 1));
        let nodes = table(README, CONFIG_HEADING).into_iter().find(|row| row[0] == "`nodes.<id>`").unwrap();
        for field in fields {
            assert!(nodes[2].contains(&format!("{field} = ")), "nodes.<id> does not show {field}: {}", nodes[2]);
        }
    }

    #[test]
    fn the_packaged_example_sets_every_key() {
        let set: BTreeSet<String> = PACKAGED
            .lines()
            .map(|l| l.trim_start_matches('#'))
            .scan(String::new(), |table, line| {
                if let Some(name) = line.strip_prefix('[') {
                    *table = name.split(']').next().unwrap_or_default().to_string();
                    return Some(None);
                }
                let key = line.split_once('=').map(|(k, _)| k.trim()).filter(|k| !k.is_empty() && !k.contains(' '));
                Some(key.map(|k| if table == "nodes" { "nodes.<id>".to_string() } else { format!("{table}.{k}") }))
            })
            .flatten()
            .collect();
        assert_eq!(set, accepted_keys(), "keys the example sets (or shows commented out)");
    }

    #[test]
    fn the_man_page_shows_every_config_key_and_exit_code() {
        let man = man();
        for key in accepted_keys() {
            assert!(man.contains(&format!("\\fB{key}\\fR")), "the man page does not show {key}");
        }
        let codes = [0, exit::FAILED, exit::BAD_INPUT, exit::REFUSED, exit::INCONSISTENT];
        let documented: Vec<u8> =
            table(README, EXIT_HEADING).iter().map(|row| plain(&row[0]).parse().unwrap()).collect();
        assert_eq!(documented, codes, "the README's exit codes");
        let status = man.split(".SH \"EXIT STATUS\"").nth(1).expect("an EXIT STATUS section");
        for code in codes {
            assert!(status.contains(&format!("\\fB{code}\\fR")), "the man page does not show exit code {code}");
        }
        for command in
            ["event", "watch", "setup", "reconcile", "status", "teardown", "check-config", "route", "can-serve"]
        {
            assert!(
                man.contains(&format!("repmgr\\-nat\\-{}(1)", command.replace('-', "\\-"))),
                "the man page does not name {command}"
            );
        }
    }
}
