//! Carrying out a decision: the steps of `plan::decide` in order, with the failure policy
//! of every step. Events, `reconcile`, `setup` and `watch` all come through here.
//!
//! | step                          | when it fails                                                |
//! |-------------------------------|--------------------------------------------------------------|
//! | ask the nodes                 | a node that misses its deadline counts as silent             |
//! | route (any)                   | stop; the transaction is atomic, the rules are unchanged; exit 1 |
//! | create slot (the primary)     | barman is not restarted; counts as barman not confirming     |
//! | restart / confirm barman      | barman did not confirm: see `open_app_on_failure`; exit 1     |
//! | route opening the application port, barman unconfirmed | opened anyway and exit 1 (default), or only barman's port and exit 1 |
//! | terminate / drop slot (a standby) | logged; the other steps go on; exit 1                    |
//! | cut old connections           | logged as an error; the switch stands                        |

use std::time::Instant;

use anyhow::{Result, anyhow, bail};

use crate::core::config::{Barman, Config, Node};
use crate::core::plan::{self, Ask, Decision, Situation, Step};
use crate::core::ruleset::{Open, Record, Route};
use crate::core::view::View;
use crate::effects::barman::Backup;
use crate::effects::db::Cluster;
use crate::effects::nat::NatSwitch;
use crate::exit::Exit;

/// The adapters a run acts through.
pub struct Effects<'a> {
    pub nat: &'a dyn NatSwitch,
    pub cluster: &'a dyn Cluster,
    pub backup: &'a (dyn Backup + Sync),
}

/// Looks at the whole cluster, decides and acts. The caller holds the run lock.
pub fn run(cfg: &Config, fx: &Effects, ask: Ask, label: &str) -> Result<()> {
    let view = fx.cluster.view();
    act_on(cfg, fx, ask, label, &view).map(drop)
}

/// What `act_on` decided from, and the steps it carried out.
pub struct Acted<'v> {
    pub seen: Situation<'v>,
    pub steps: Vec<Step>,
}

/// Decides from `view`, and the nat table and the record read now (under the run lock the
/// caller holds: what another run changed before is seen), and acts.
pub fn act_on<'v>(cfg: &Config, fx: &Effects, ask: Ask, label: &str, view: &'v View) -> Result<Acted<'v>> {
    let live = fx.nat.live()?;
    let seen = Situation::read(cfg, view, &live, fx.nat.recorded()?);
    let verbose = matches!(ask, Ask::Reconcile { .. });
    for (node, answer) in &view.nodes {
        let level = if verbose { log::Level::Info } else { log::Level::Debug };
        log::log!(level, "{label}: node {}: {}", node.id(), answer.describe());
    }
    let decision = plan::decide(cfg, ask, &seen);
    // a refusal says it in its one line
    if !seen.arbitration.stale.is_empty() && !matches!(decision, Decision::Refuse(_)) {
        log::warn!("{label}: the legitimate primary: {}", seen.arbitration.describe());
    }
    let steps = match decision {
        Decision::Nothing(why) => {
            log::info!("{label}: nothing to do: {why}");
            Vec::new()
        }
        Decision::Refuse(why) => return Err(Exit::Refused(format!("{label}: {why}")).into()),
        Decision::Unanswered(why) => bail!("{label}: {why}"),
        Decision::Act(steps) => {
            execute(cfg, fx, label, &steps)?;
            steps
        }
    };
    Ok(Acted { seen, steps })
}

/// Runs the steps in order with the failure policy in this module's table.
pub fn execute(cfg: &Config, fx: &Effects, label: &str, steps: &[Step]) -> Result<()> {
    std::thread::scope(|scope| {
        // Stopping barman's receive-wal needs nothing from the steps before it: it runs
        // beside them (saving its ~0.2 s of Python start-up), and the restart waits for it.
        let restarts = steps.iter().any(|s| matches!(s, Step::RestartBarman(_)));
        let mut stopping = restarts.then(|| scope.spawn(|| fx.backup.stop_receive_wal()));
        let started = Instant::now();
        // Set when barman could not be brought to confirm the new primary.
        let mut unconfirmed: Option<anyhow::Error> = None;
        let mut left_closed = false;
        let mut failed_elsewhere = Vec::new();
        for step in steps {
            let step_started = Instant::now();
            let result = match *step {
                Step::Route(record) => {
                    let record = match &unconfirmed {
                        Some(_)
                            if record.route.open == Open::All
                                && !cfg.barman.as_ref().is_some_and(|b| b.open_app_on_failure) =>
                        {
                            left_closed = true;
                            Record { route: Route::new(record.route.node, Open::Barman), ..record }
                        }
                        Some(_) if record.route.open == Open::All => {
                            log::error!("{label}: opening the application port although barman did not confirm");
                            record
                        }
                        _ => record,
                    };
                    fx.nat.switch(record).map(drop)
                }
                Step::CreateSlot(node) | Step::CreateStandbySlot(node) => fx.cluster.create_slot(node),
                Step::RestartBarman(_) | Step::ConfirmBarman(_) if unconfirmed.is_some() => {
                    log::warn!("{label}: {step}: skipped, barman cannot stream (see above)");
                    continue;
                }
                Step::RestartBarman(_) => {
                    let stopped = match stopping.take() {
                        Some(handle) => handle.join().unwrap_or_else(|_| Err(anyhow!("stopping receive-wal panicked"))),
                        None => fx.backup.stop_receive_wal(),
                    };
                    stopped.and_then(|()| fx.backup.start_receive_wal())
                }
                Step::ConfirmBarman(node) => confirm_barman(fx, node),
                Step::TerminateWalsender(node, pid) => fx.cluster.terminate(node, pid),
                Step::DropSlot(node) => fx.cluster.drop_slot(node),
                Step::AdvanceSlot(node, lsn) => fx.cluster.advance_slot(node, lsn),
            };
            let ms = step_started.elapsed().as_millis();
            match result {
                Ok(()) => log::info!("{label}: {step} ({ms} ms)"),
                // barman's side: the promotion goes on (see open_app_on_failure)
                Err(e) if matches!(step, Step::CreateSlot(_) | Step::RestartBarman(_) | Step::ConfirmBarman(_)) => {
                    log::error!("{label}: {step} failed ({ms} ms): {e:#}");
                    unconfirmed = Some(e);
                }
                // another node's housekeeping: the rest goes on
                Err(e) if !step.is_promotion() => {
                    log::error!("{label}: {step} failed ({ms} ms): {e:#}");
                    failed_elsewhere.push(step.to_string());
                }
                Err(e) => return Err(e.context(format!("{label}: {step} failed ({ms} ms)"))),
            }
        }
        log::info!("{label}: done in {} ms", started.elapsed().as_millis());
        if left_closed {
            let e = unconfirmed.take().expect("left closed because barman did not confirm");
            bail!(
                "{label}: barman did not confirm ({e:#}); application port left closed (barman.open_app_on_failure = \
                 false)"
            );
        }
        if let Some(e) = unconfirmed {
            return Err(e.context(format!("{label}: barman did not confirm the new primary")));
        }
        if !failed_elsewhere.is_empty() {
            bail!("{label}: failed: {}", failed_elsewhere.join("; "));
        }
        Ok(())
    })
}

/// barman confirms a WAL switch while the new primary writes a tiny WAL record every
/// `Barman::NUDGE_EVERY` (barman archives a streamed file only once the next has begun).
fn confirm_barman(fx: &Effects, node: Node) -> Result<()> {
    let mut last = Instant::now() - Barman::NUDGE_EVERY;
    fx.backup.switch_wal(&mut || {
        if last.elapsed() >= Barman::NUDGE_EVERY {
            if let Err(e) = fx.cluster.emit_wal(node) {
                log::debug!("{e:#}");
            }
            last = Instant::now();
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::config::NodeId;
    use crate::core::config::tests::{example, node};
    use crate::core::event::Claim;
    use crate::core::ruleset::Routing;
    use crate::core::view::tests::view;
    use crate::core::view::{Lsn, Slot};
    use crate::effects::dryrun::{PrintBackup, PrintCluster, PrintNat, Sink};
    use crate::effects::testing::Call::{self, *};
    use crate::effects::testing::{Fake, IDLE, down, primary, rec, standby};
    use crate::exit;

    fn promote(cfg: &Config, fake: &Fake, id: u32) -> Result<()> {
        let fx = Effects { nat: fake, cluster: fake, backup: fake };
        run(cfg, &fx, Ask::Event(Claim::Promote(NodeId::new(id))), &format!("node {id} standby_promote"))
    }

    /// The failover of node 1 to node 2: the slot, the application port, then barman.
    const FAILOVER: [Call; 5] = [CreateSlot(2), Switch(2, Open::All, 2), BarmanStart, EmitWal(2), SwitchWal];

    #[test]
    fn promote_opens_the_application_port_once_the_slot_exists_then_restarts_barman() {
        let fake = Fake::new(rec(1, Open::All, 1), view(&[(1, down()), (2, primary(2, None))]));
        promote(&example(), &fake, 2).unwrap();
        assert_eq!(fake.calls(), FAILOVER);
        assert_eq!(fake.routing(), Routing::To(Route::new(node(2), Open::All)));
    }

    #[test]
    fn a_refused_or_unanswered_promote_changes_nothing() {
        let cfg = example();
        let fake = Fake::new(rec(1, Open::All, 1), view(&[(1, primary(1, IDLE)), (2, standby(None))]));
        let err = promote(&cfg, &fake, 2).unwrap_err();
        assert_eq!(exit::code(&err), exit::REFUSED);
        assert_eq!(
            format!("{err:#}"),
            "node 2 standby_promote: node 2 is in recovery on timeline 1; the legitimate primary: node 1 on timeline 1; nothing changed"
        );
        assert_eq!(fake.calls(), []);

        let fake = Fake::new(rec(1, Open::All, 1), view(&[(1, primary(1, IDLE)), (2, down())]));
        let err = promote(&cfg, &fake, 2).unwrap_err();
        assert_eq!(exit::code(&err), exit::FAILED);
        assert_eq!(
            format!("{err:#}"),
            "node 2 standby_promote: node 2 cannot be asked (down: connection refused); nothing changed"
        );
        assert_eq!(fake.calls(), []);
    }

    #[test]
    fn a_failed_switch_stops_before_barman() {
        let fake = Fake::new(rec(1, Open::All, 1), view(&[(1, down()), (2, primary(2, None))])).failing(&[Switch(
            2,
            Open::All,
            2,
        )]);
        let err = promote(&example(), &fake, 2).unwrap_err();
        assert_eq!(exit::code(&err), exit::FAILED);
        // receive-wal may have been stopped beside the switch: watch or barman's cron restarts it
        assert_eq!(fake.calls(), [CreateSlot(2), Switch(2, Open::All, 2)]);
    }

    #[test]
    fn barman_failures_after_archive_open_the_application_port_anyway_by_default() {
        let mut cfg = example();
        cfg.barman.as_mut().unwrap().open_app = crate::core::config::OpenApp::AfterArchive;
        for failing in [SwitchWal, BarmanStart, BarmanStop, CreateSlot(2)] {
            let fake = Fake::new(rec(1, Open::All, 1), view(&[(1, down()), (2, primary(2, None))]))
                .failing(std::slice::from_ref(&failing));
            let err = promote(&cfg, &fake, 2).unwrap_err();
            assert_eq!(exit::code(&err), exit::FAILED);
            assert!(format!("{err:#}").contains("barman did not confirm the new primary"), "{err:#}");
            assert_eq!(fake.calls().last(), Some(&Switch(2, Open::All, 2)), "after {failing:?}");
        }
    }

    #[test]
    fn barman_failure_can_keep_the_application_port_closed() {
        let mut cfg = example();
        cfg.barman.as_mut().unwrap().open_app_on_failure = false;
        // after the slot: a slot that cannot be made leaves only barman's port open
        let fake =
            Fake::new(rec(1, Open::All, 1), view(&[(1, down()), (2, primary(2, None))])).failing(&[CreateSlot(2)]);
        let err = promote(&cfg, &fake, 2).unwrap_err();
        assert!(format!("{err:#}").contains("application port left closed"), "{err:#}");
        assert_eq!(fake.calls(), [CreateSlot(2), Switch(2, Open::Barman, 2)]);
        // after the archive: barman's failure too
        cfg.barman.as_mut().unwrap().open_app = crate::core::config::OpenApp::AfterArchive;
        let fake = Fake::new(rec(1, Open::All, 1), view(&[(1, down()), (2, primary(2, None))])).failing(&[SwitchWal]);
        let err = promote(&cfg, &fake, 2).unwrap_err();
        assert!(format!("{err:#}").contains("application port left closed"), "{err:#}");
        assert_eq!(fake.routing(), Routing::To(Route::new(node(2), Open::Barman)));
    }

    #[test]
    fn a_standby_slot_that_cannot_be_advanced_does_not_stop_the_promotion() {
        let behind = Some(Slot { active_pid: None, restart_lsn: Some(Lsn(0x100_0000)) });
        let fake = Fake::new(rec(1, Open::All, 1), view(&[(1, standby(behind)), (2, primary(2, IDLE))]))
            .failing(&[Advance(1, 0x300_0000)]);
        let err = promote(&example(), &fake, 2).unwrap_err();
        assert_eq!(exit::code(&err), exit::FAILED);
        assert_eq!(format!("{err:#}"), "node 2 standby_promote: failed: advance slot on standby node 1 to 0/3000000");
        let expected = [Switch(2, Open::All, 2), BarmanStart, EmitWal(2), SwitchWal, Advance(1, 0x300_0000)];
        assert_eq!(fake.calls(), expected);
        assert_eq!(fake.routing(), Routing::To(Route::new(node(2), Open::All)));
    }

    /// `--dry-run` prints every change and makes none: the output is what an operator
    /// pastes, so it is pinned here.
    #[test]
    fn dry_run_prints_the_whole_failover() {
        let cfg = example();
        let fake = Fake::new(rec(1, Open::All, 1), view(&[(1, standby(IDLE)), (2, primary(2, None))]));
        let out = Sink::capture();
        let nat = PrintNat::new(&cfg, &fake, true, &out);
        let cluster = PrintCluster { cfg: &cfg, real: &fake, out: &out };
        let backup = PrintBackup { cfg: cfg.barman.as_ref().unwrap(), out: &out };
        let fx = Effects { nat: &nat, cluster: &cluster, backup: &backup };
        run(&cfg, &fx, Ask::Event(Claim::Promote(NodeId::new(2))), "node 2 standby_promote").unwrap();
        assert_eq!(fake.calls(), [], "a dry run acted");
        let sudo = crate::effects::exec::system_tool("sudo");
        let sudo = sudo.display();
        assert_eq!(
            out.captured(),
            format!(
                "\
node 2 (10.8.2.1): SELECT pg_create_physical_replication_slot($1, true);  -- $1 = 'barman'
{sudo} -n /usr/bin/repmgr-nat route 2 --ports all --timeline 2
# which runs as root:
/usr/sbin/iptables-restore --noflush -w 5 <<EOF
*nat
:repmgr_dnat - [0:0]
-A repmgr_dnat -d 10.8.3.1/32 -p tcp -m tcp --dport 54321 -j DNAT --to-destination 10.8.2.1:5432
-A repmgr_dnat -d 10.8.3.1/32 -p tcp -m tcp --dport 54322 -j DNAT --to-destination 10.8.2.1:5432
:repmgr_snat - [0:0]
-A repmgr_snat -d 10.8.2.1/32 -p tcp -m tcp --dport 5432 -j SNAT --to-source 10.8.3.1
COMMIT
EOF
/usr/sbin/conntrack -D -p tcp --orig-dst 10.8.3.1 --reply-src 10.8.1.1 --reply-port-src 5432
# and records node 2 ports all (timeline 2)
{sudo} -n -u barman /usr/bin/barman receive-wal --stop main_backup  # begun beside the steps before
{sudo} -n -u barman /usr/bin/barman receive-wal main_backup &
{sudo} -n -u barman /usr/bin/barman switch-wal --force --archive --archive-timeout=90 main_backup
node 2 (10.8.2.1): BEGIN; SET LOCAL synchronous_commit TO local; SELECT pg_logical_emit_message(true, 'repmgr-nat', 'barman switch-wal'); COMMIT;  -- every 50 ms while barman waits
"
            )
        );
    }
}
