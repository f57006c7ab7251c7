//! A kernel's tables in memory, for tests: applies `iptables-restore --noflush` input the
//! way iptables does (all of it or nothing) and prints them as `iptables-save` does.

use std::collections::BTreeMap;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tables {
    /// table -> chain -> rules ("-A chain ..."), built-in chains included
    pub tables: BTreeMap<String, BTreeMap<String, Vec<String>>>,
}

impl Default for Tables {
    fn default() -> Tables {
        let builtin = |chains: &[&str]| chains.iter().map(|c| (c.to_string(), Vec::new())).collect();
        Tables {
            tables: [
                ("nat".to_string(), builtin(&["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"])),
                ("filter".to_string(), builtin(&["INPUT", "FORWARD", "OUTPUT"])),
            ]
            .into(),
        }
    }
}

impl Tables {
    /// The tables after `restore`, or the first error (and the tables unchanged).
    pub fn restore(&self, text: &str) -> Result<Tables, String> {
        let mut next = self.clone();
        let mut table = String::new();
        for line in text.lines() {
            let words: Vec<&str> = line.split(' ').collect();
            if let [t] = words[..]
                && let Some(name) = t.strip_prefix('*')
            {
                table = name.to_string();
                continue;
            }
            let chains = next.tables.entry(table.clone()).or_default();
            match words[..] {
                ["COMMIT"] => {}
                [decl, ..] if decl.starts_with(':') => {
                    chains.insert(decl[1..].to_string(), Vec::new());
                }
                ["-X", chain] => match chains.get(chain) {
                    // as the kernel: a chain another rule jumps or goes to stays
                    _ if chains.values().flatten().any(|rule| super::target_of(rule) == Some(chain)) => {
                        return Err(format!("-X {chain}: a rule still jumps to it"));
                    }
                    Some(rules) if rules.is_empty() => {
                        chains.remove(chain);
                    }
                    _ => return Err(format!("-X {chain}: missing or not empty")),
                },
                [op @ ("-A" | "-I" | "-D"), chain, ..] => {
                    let rule = format!("-A {}", &line[3..]);
                    if let Some(target) = super::target_of(&rule)
                        && target.chars().any(|c| c.is_ascii_lowercase())
                        && !chains.contains_key(target)
                    {
                        return Err(format!("{line}: chain {target} does not exist"));
                    }
                    let rules = chains.get_mut(chain).ok_or(format!("{line}: no chain {chain}"))?;
                    match op {
                        "-A" => rules.push(rule),
                        "-I" => rules.insert(0, rule),
                        _ => {
                            let at = rules.iter().position(|r| *r == rule).ok_or(format!("{line}: no such rule"))?;
                            rules.remove(at);
                        }
                    }
                }
                _ => return Err(format!("cannot read {line:?}")),
            }
        }
        Ok(next)
    }

    pub fn save(&self) -> String {
        let mut text = String::new();
        for (table, chains) in &self.tables {
            text.push_str(&format!("*{table}\n"));
            for chain in chains.keys() {
                let policy = if chain.chars().all(|c| c.is_ascii_uppercase()) { "ACCEPT" } else { "-" };
                text.push_str(&format!(":{chain} {policy} [0:0]\n"));
            }
            for rules in chains.values() {
                for rule in rules {
                    text.push_str(&format!("{rule}\n"));
                }
            }
            text.push_str("COMMIT\n");
        }
        text
    }
}
