//! `Cache::fsck`: the store's checks (`store::fsck`), then the index
//! against `entries/`, and with `--repair` the fixes of both. Blobs are
//! hashed while pipelines run; the rest holds new ones until it is done.

use super::*;

/// What checking the index against `entries/` found.
struct IndexCheck {
    /// Each problem, with the index record it should hold (`IndexStale`).
    problems: Vec<(Problem, Option<EntryMeta>)>,
    /// Entry records the index does not list.
    unindexed: Vec<Digest>,
    /// The index could not be read through.
    damaged: bool,
}

impl Cache {
    /// Check the whole store (see `store::fsck`) and the index against
    /// `entries/`; with `repair`, fix what can be fixed. Blobs are hashed
    /// while pipelines run; the rest waits for running ones to finish, and
    /// holds new ones until it is done.
    pub fn fsck(
        &self,
        repair: bool,
        jobs: usize,
        rederive: fsck::Rederive<'_>,
        progress: &Progress,
    ) -> Result<Report> {
        let t0 = std::time::Instant::now();
        let mut blobs = fsck::scan_blobs(&self.store, jobs, progress)?;
        progress.set_phase(Phase::Waiting);
        let _quiet = self.gate.write().unwrap_or_else(|p| p.into_inner());
        let mut entries = fsck::scan_entries(&self.store, &mut blobs, rederive, progress)?;
        if blobs.any_missing() {
            // Blobs were lost (a pack or file deleted by hand): whatever
            // vouches for them being stored (the sync stat cache) must
            // check again, so the next `dagfs sync` stores them again.
            // NB: best effort: a store fsck may not write (read-only) is
            // still checked.
            let _ = self.store.new_blob_generation();
        }
        progress.set_phase(Phase::Index);
        let (orphans, orphan_bytes) = fsck::orphans(&blobs, &entries);
        let mut report = Report {
            repair,
            blobs: progress
                .blobs_done
                .load(std::sync::atomic::Ordering::Relaxed),
            bytes_hashed: blobs.bytes,
            entries: entries.entries.len() as u64,
            sync_snapshots: entries.sync_snapshots,
            orphan_blobs: orphans,
            orphan_bytes,
            ..Report::default()
        };
        let mut check = self.check_index(&entries);
        report.unindexed_entries = check.unindexed.len() as u64;
        if repair {
            progress.set_phase(Phase::Repair);
            self.repair(&mut report, &mut blobs, &mut entries, &mut check)?;
        }
        self.check_totals(repair, &mut check.problems)?;
        if repair {
            self.flush()?;
        }
        report.problems = blobs.problems;
        report.problems.extend(entries.problems);
        report
            .problems
            .extend(check.problems.into_iter().map(|(p, _)| p));
        report.elapsed_ms = t0.elapsed().as_millis() as u64;
        progress.set_phase(Phase::Done);
        Ok(report)
    }

    /// The index against `entries/`: rows with no record (orphans), rows
    /// that differ from their record (stale), records with no row.
    fn check_index(&self, entries: &fsck::EntryScan) -> IndexCheck {
        let mut check = IndexCheck {
            problems: Vec::new(),
            unindexed: Vec::new(),
            damaged: false,
        };
        let all = match self.index.all_keys().collect::<Result<Vec<_>, _>>() {
            Ok(all) => all,
            Err(e) => {
                check.damaged = true;
                check.problems.push((
                    Problem::new(ProblemKind::IndexDamaged, "index", e.to_string()),
                    None,
                ));
                return check;
            }
        };
        let listed: HashSet<Digest> = all.iter().map(|(k, _)| *k).collect();
        for (k, meta) in &all {
            if entries.drop.contains_key(k) {
                continue;
            }
            let task = Some(format!("{}/{}", meta.dag, meta.task));
            match entries.entries.get(k) {
                None => check.problems.push((
                    Problem {
                        task,
                        ..Problem::new(
                            ProblemKind::IndexOrphan,
                            k.to_hex(),
                            "the index lists it, entries/ has no record of it",
                        )
                    },
                    None,
                )),
                Some(e) => {
                    let mut want = EntryMeta::from_entry(e);
                    want.last_used_ms = meta.last_used_ms;
                    if want != *meta {
                        check.problems.push((
                            Problem {
                                task,
                                ..Problem::new(
                                    ProblemKind::IndexStale,
                                    k.to_hex(),
                                    "the index's record differs from the entry record",
                                )
                            },
                            Some(want),
                        ));
                    }
                }
            }
        }
        check.unindexed.extend(
            entries
                .entries
                .keys()
                .filter(|k| !listed.contains(k) && !entries.drop.contains_key(k))
                .copied(),
        );
        check
    }

    /// `--repair`: the store's fixes, then the index's (drop what is
    /// damaged, rebuild a damaged index, remove orphans, rewrite stale
    /// rows, index what is unindexed).
    fn repair(
        &self,
        report: &mut Report,
        blobs: &mut fsck::BlobScan,
        entries: &mut fsck::EntryScan,
        check: &mut IndexCheck,
    ) -> Result<()> {
        report.quarantined += fsck::repair_store(&self.store, blobs, entries);
        let drop: Vec<(Digest, String)> =
            entries.drop.iter().map(|(k, w)| (*k, w.clone())).collect();
        for (k, why) in drop {
            self.index.drop_corrupt(&k, &why)?;
            if fsck::drop_entry(&self.store, entries, &k) {
                report.dropped_entries.push(k.to_hex());
            }
        }
        if check.damaged {
            rebuild(&self.store, &self.index)?;
        }
        for (p, want) in &mut check.problems {
            let key = Digest::from_hex(&p.subject);
            let action = match (p.kind, key, want) {
                (ProblemKind::IndexOrphan, Some(k), _) => {
                    self.index.remove(&k)?;
                    "removed from the index"
                }
                (ProblemKind::IndexStale, Some(k), Some(m)) => {
                    self.reindex(&k, m)?;
                    "index record rewritten"
                }
                (ProblemKind::IndexDamaged, _, _) => "index rebuilt from entries/",
                _ => continue,
            };
            p.repaired = true;
            p.action = Some(action.into());
        }
        if !check.damaged {
            for k in &check.unindexed {
                if let Some(e) = entries.entries.get(k) {
                    self.reindex(k, &EntryMeta::from_entry(e))?;
                    report.indexed += 1;
                }
            }
        }
        Ok(())
    }

    /// The index's running totals against its rows (recounted with
    /// `repair`).
    fn check_totals(
        &self,
        repair: bool,
        problems: &mut Vec<(Problem, Option<EntryMeta>)>,
    ) -> Result<()> {
        let ((n_rec, n), (b_rec, b)) = self.index.totals()?;
        if (n_rec, b_rec) != (n, b) {
            let mut p = Problem::new(
                ProblemKind::IndexTotals,
                "index",
                format!(
                    "totals say {n_rec} entries, {b_rec} bytes; its entries add up to {n}, {b}"
                ),
            );
            if repair {
                self.index.set_totals(n, b)?;
                p.repaired = true;
                p.action = Some("totals recounted".into());
            }
            problems.push((p, None));
        }
        Ok(())
    }
}
