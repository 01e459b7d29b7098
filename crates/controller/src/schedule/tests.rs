use super::*;

fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_else(|e| panic!("bad test time {s}: {e}"))
}

fn compile(spec: &ScheduleSpec) -> CompiledSchedule {
    spec.compile()
        .unwrap_or_else(|e| panic!("{} should compile: {e}", spec.cron))
}

fn every_minute() -> ScheduleSpec {
    ScheduleSpec::new("0 * * * * *")
}

#[test]
fn five_and_six_field_crons_parse_seconds_are_honoured() {
    let five = compile(&ScheduleSpec::new("*/15 * * * *"));
    assert_eq!(
        five.next_fire(t("2025-03-01T10:07:30Z")),
        Some(t("2025-03-01T10:15:00Z"))
    );
    let six = compile(&ScheduleSpec::new("*/10 * * * * *"));
    assert_eq!(
        six.next_fire(t("2025-03-01T10:07:31Z")),
        Some(t("2025-03-01T10:07:40Z"))
    );
}

#[test]
fn next_fire_is_strictly_after_and_ignores_subseconds() {
    let s = compile(&ScheduleSpec::new("* * * * * *"));
    assert_eq!(
        s.next_fire(t("2025-03-01T10:00:00Z")),
        Some(t("2025-03-01T10:00:01Z"))
    );
    assert_eq!(
        s.next_fire(t("2025-03-01T10:00:00.999Z")),
        Some(t("2025-03-01T10:00:01Z"))
    );
    assert_eq!(
        s.previous_fire(t("2025-03-01T10:00:00.5Z")),
        Some(t("2025-03-01T10:00:00Z"))
    );
}

#[test]
fn time_zones_shift_the_slot() {
    let mut spec = ScheduleSpec::new("0 0 9 * * MON-FRI");
    spec.time_zone = "Europe/Berlin".to_owned();
    let s = compile(&spec);
    // Winter: CET is UTC+1. Friday 2025-01-10 09:00 Berlin = 08:00 UTC.
    assert_eq!(
        s.next_fire(t("2025-01-10T00:00:00Z")),
        Some(t("2025-01-10T08:00:00Z"))
    );
    // After Friday's slot the next is Monday.
    assert_eq!(
        s.next_fire(t("2025-01-10T08:00:00Z")),
        Some(t("2025-01-13T08:00:00Z"))
    );
    // Summer: CEST is UTC+2.
    assert_eq!(
        s.next_fire(t("2025-07-01T00:00:00Z")),
        Some(t("2025-07-01T07:00:00Z"))
    );
}

#[test]
fn dst_gap_and_overlap_do_not_lose_or_loop() {
    let mut spec = ScheduleSpec::new("0 */30 * * * *");
    spec.time_zone = "Europe/Berlin".to_owned();
    let s = compile(&spec);
    // Fall back on 2025-10-26: 03:00 CEST -> 02:00 CET; 02:00..03:00 happens twice.
    let fires: Vec<_> = s
        .fires_between(t("2025-10-25T23:45:00Z"), t("2025-10-26T02:15:00Z"))
        .collect();
    // Every 30 minutes in UTC, both passes of the repeated hour included.
    let want: Vec<_> = [
        "2025-10-26T00:00:00Z",
        "2025-10-26T00:30:00Z",
        "2025-10-26T01:00:00Z",
        "2025-10-26T01:30:00Z",
        "2025-10-26T02:00:00Z",
    ]
    .into_iter()
    .map(t)
    .collect();
    assert_eq!(fires, want);
    // Strictly increasing, always.
    assert!(fires.windows(2).all(|w| w[0] < w[1]));
    // Spring forward on 2025-03-30: 02:00 CET -> 03:00 CEST; nothing stalls.
    let spring: Vec<_> = s
        .fires_between(t("2025-03-30T00:15:00Z"), t("2025-03-30T01:45:00Z"))
        .collect();
    assert_eq!(
        spring,
        vec![
            t("2025-03-30T00:30:00Z"),
            t("2025-03-30T01:00:00Z"),
            t("2025-03-30T01:30:00Z")
        ]
    );
}

#[test]
fn fixed_time_jobs_fire_once_across_dst() {
    let mut spec = ScheduleSpec::new("0 30 2 * * *");
    spec.time_zone = "Europe/Berlin".to_owned();
    let s = compile(&spec);
    // Fall back: 02:30 happens twice on 2025-10-26; it fires in the first pass only.
    assert_eq!(
        s.next_fire(t("2025-10-25T12:00:00Z")),
        Some(t("2025-10-26T00:30:00Z"))
    );
    assert_eq!(
        s.next_fire(t("2025-10-26T00:30:00Z")),
        Some(t("2025-10-27T01:30:00Z"))
    );
    assert_eq!(
        s.previous_fire(t("2025-10-26T02:00:00Z")),
        Some(t("2025-10-26T00:30:00Z"))
    );
    // Spring forward: 02:30 does not exist on 2025-03-30; it fires when the gap ends
    // (03:00 CEST = 01:00 UTC), and both directions agree.
    assert_eq!(
        s.next_fire(t("2025-03-29T12:00:00Z")),
        Some(t("2025-03-30T01:00:00Z"))
    );
    assert_eq!(
        s.previous_fire(t("2025-03-30T05:00:00Z")),
        Some(t("2025-03-30T01:00:00Z"))
    );
    assert_eq!(
        s.next_fire(t("2025-03-30T01:00:00Z")),
        Some(t("2025-03-31T00:30:00Z"))
    );
}

#[test]
fn previous_fire_matches_next_fire_around_fall_back() {
    let mut spec = ScheduleSpec::new("0 */30 * * * *");
    spec.time_zone = "Europe/Berlin".to_owned();
    let s = compile(&spec);
    for slot in s.fires_between(t("2025-10-25T23:45:00Z"), t("2025-10-26T02:15:00Z")) {
        assert_eq!(s.previous_fire(slot), Some(slot));
        assert_eq!(
            s.previous_fire(slot + ChronoDuration::minutes(29)),
            Some(slot)
        );
    }
}

#[test]
fn validation_names_what_is_wrong() {
    let e = ScheduleSpec::new("* * *").compile().unwrap_err();
    assert!(matches!(e, ScheduleError::Cron { .. }), "{e}");
    assert!(e.to_string().contains("`* * *`"), "{e}");

    let e = ScheduleSpec::new("61 * * * * *").compile().unwrap_err();
    assert!(matches!(e, ScheduleError::Cron { .. }), "{e}");

    let mut spec = every_minute();
    spec.time_zone = "Mars/Olympus_Mons".to_owned();
    let e = spec.compile().unwrap_err();
    assert_eq!(e, ScheduleError::TimeZone("Mars/Olympus_Mons".to_owned()));
    assert!(e.to_string().contains("IANA"), "{e}");

    let mut spec = every_minute();
    spec.blackouts = vec![Blackout::window(
        t("2025-01-02T00:00:00Z"),
        t("2025-01-01T00:00:00Z"),
    )];
    let e = spec.compile().unwrap_err();
    assert!(matches!(e, ScheduleError::Blackout { index: 0, .. }), "{e}");

    let mut spec = every_minute();
    spec.blackouts = vec![Blackout {
        start: Some(t("2025-01-01T00:00:00Z")),
        cron: Some("0 0 * * *".to_owned()),
        ..Blackout::default()
    }];
    let e = spec.compile().unwrap_err();
    assert!(e.to_string().contains("either `start` and `end`"), "{e}");

    let mut spec = every_minute();
    spec.blackouts = vec![Blackout::recurring("nope", Duration::from_secs(60))];
    assert!(matches!(
        spec.compile().unwrap_err(),
        ScheduleError::Blackout { index: 0, .. }
    ));
}

#[test]
fn spec_json_round_trips_and_refuses_unknown_keys() {
    let spec: ScheduleSpec = serde_json::from_str(
        r#"{"cron": "0 0 10 * * TUE", "time_zone": "America/New_York", "overlap": "replace",
            "missed": "run_once",
            "blackouts": [{"start": "2025-12-20T00:00:00Z", "end": "2026-01-05T00:00:00Z", "reason": "holiday freeze"},
                          {"cron": "0 0 17 * * FRI", "duration": "64h"}]}"#,
    )
    .unwrap();
    assert_eq!(spec.overlap, OverlapPolicy::Replace);
    assert_eq!(spec.missed, MissedRunPolicy::RunOnce);
    assert_eq!(spec.blackouts.len(), 2);
    compile(&spec);
    let back: ScheduleSpec = serde_json::from_value(serde_json::to_value(&spec).unwrap()).unwrap();
    assert_eq!(back, spec);

    let defaults: ScheduleSpec = serde_json::from_str(r#"{"cron": "0 * * * *"}"#).unwrap();
    assert_eq!(defaults.time_zone, "UTC");
    assert_eq!(defaults.overlap, OverlapPolicy::Skip);
    assert_eq!(defaults.missed, MissedRunPolicy::Skip);

    assert!(
        serde_json::from_str::<ScheduleSpec>(r#"{"cron": "0 * * * *", "overlaps": "skip"}"#)
            .is_err()
    );
    assert!(
        serde_json::from_str::<ScheduleSpec>(r#"{"cron": "0 * * * *", "overlap": "allow"}"#)
            .is_err()
    );
}

#[test]
fn not_due_waits_for_the_next_slot() {
    let s = compile(&every_minute());
    let anchor = t("2025-03-01T10:00:00Z");
    assert_eq!(
        s.decide(t("2025-03-01T10:00:30Z"), anchor, false),
        Decision::Wait {
            until: Some(t("2025-03-01T10:01:00Z"))
        }
    );
    // A schedule created mid-minute does not fire for the slot before it existed.
    assert_eq!(
        s.decide(t("2025-03-01T10:00:40Z"), t("2025-03-01T10:00:20Z"), false),
        Decision::Wait {
            until: Some(t("2025-03-01T10:01:00Z"))
        }
    );
}

#[test]
fn on_time_slot_fires() {
    let s = compile(&every_minute());
    assert_eq!(
        s.decide(
            t("2025-03-01T10:01:00.004Z"),
            t("2025-03-01T10:00:00Z"),
            false
        ),
        Decision::Fire(Due {
            slot: t("2025-03-01T10:01:00Z"),
            catch_up: false,
            missed: 0
        })
    );
    // Still on time within LATE_AFTER.
    assert!(matches!(
        s.decide(t("2025-03-01T10:01:59Z"), t("2025-03-01T10:00:00Z"), false),
        Decision::Fire(_)
    ));
}

#[test]
fn overlap_policies() {
    let now = t("2025-03-01T10:01:00.1Z");
    let anchor = t("2025-03-01T10:00:00Z");
    let due = Due {
        slot: t("2025-03-01T10:01:00Z"),
        catch_up: false,
        missed: 0,
    };
    let with = |overlap| {
        let mut spec = every_minute();
        spec.overlap = overlap;
        compile(&spec)
    };
    assert_eq!(
        with(OverlapPolicy::Skip).decide(now, anchor, true),
        Decision::Skip {
            due,
            reason: SkipReason::Overlap
        }
    );
    assert_eq!(
        with(OverlapPolicy::Queue).decide(now, anchor, true),
        Decision::Queue(due)
    );
    assert_eq!(
        with(OverlapPolicy::Replace).decide(now, anchor, true),
        Decision::Replace(due)
    );
    // Nothing running: every policy fires.
    for p in [
        OverlapPolicy::Skip,
        OverlapPolicy::Queue,
        OverlapPolicy::Replace,
    ] {
        assert_eq!(with(p).decide(now, anchor, false), Decision::Fire(due));
    }
}

#[test]
fn absolute_blackout_skips_with_the_window() {
    let mut spec = every_minute();
    spec.blackouts = vec![
        Blackout::window(t("2025-03-01T10:00:30Z"), t("2025-03-01T10:05:00Z"))
            .with_reason("release freeze"),
    ];
    let s = compile(&spec);
    match s.decide(
        t("2025-03-01T10:01:00.2Z"),
        t("2025-03-01T10:00:00Z"),
        false,
    ) {
        Decision::Skip {
            due,
            reason: SkipReason::Blackout(b),
        } => {
            assert_eq!(due.slot, t("2025-03-01T10:01:00Z"));
            assert_eq!(b.start, t("2025-03-01T10:00:30Z"));
            assert_eq!(b.end, t("2025-03-01T10:05:00Z"));
            assert_eq!(b.reason.as_deref(), Some("release freeze"));
            let msg = SkipReason::Blackout(b).to_string();
            assert!(msg.contains("release freeze"), "{msg}");
        }
        other => panic!("expected a blackout skip, got {other:?}"),
    }
    // The end is exclusive: the 10:05 slot fires.
    assert!(matches!(
        s.decide(
            t("2025-03-01T10:05:00.1Z"),
            t("2025-03-01T10:04:00Z"),
            false
        ),
        Decision::Fire(_)
    ));
}

#[test]
fn recurring_blackout_covers_the_weekend_in_the_schedule_zone() {
    let mut spec = ScheduleSpec::new("0 0 * * * *"); // hourly
    spec.time_zone = "Europe/Berlin".to_owned();
    spec.blackouts = vec![Blackout::recurring(
        "0 0 17 * * FRI",
        Duration::from_secs(64 * 3600),
    )];
    let s = compile(&spec);
    // Friday 2025-01-10 17:00 Berlin = 16:00 UTC .. Monday 09:00 Berlin = 08:00 UTC.
    assert!(s.blackout_at(t("2025-01-10T15:59:59Z")).is_none());
    let b = s
        .blackout_at(t("2025-01-10T16:00:00Z"))
        .expect("friday 17:00 is in");
    assert_eq!(b.start, t("2025-01-10T16:00:00Z"));
    assert_eq!(b.end, t("2025-01-13T08:00:00Z"));
    assert!(s.blackout_at(t("2025-01-12T12:00:00Z")).is_some());
    assert!(s.blackout_at(t("2025-01-13T08:00:00Z")).is_none());
    assert!(matches!(
        s.decide(
            t("2025-01-11T10:00:00.1Z"),
            t("2025-01-11T09:00:00Z"),
            false
        ),
        Decision::Skip {
            reason: SkipReason::Blackout(_),
            ..
        }
    ));
    assert!(matches!(
        s.decide(
            t("2025-01-13T08:00:00.1Z"),
            t("2025-01-13T07:00:00Z"),
            false
        ),
        Decision::Fire(_)
    ));
}

#[test]
fn missed_skip_records_and_waits() {
    let s = compile(&every_minute()); // missed: skip
    // Down from 10:00 to 10:10:30: ten slots missed, the latest 30 s ago (on time).
    assert_eq!(
        s.decide(t("2025-03-01T10:10:30Z"), t("2025-03-01T10:00:00Z"), false),
        Decision::Fire(Due {
            slot: t("2025-03-01T10:10:00Z"),
            catch_up: false,
            missed: 9
        })
    );
    // Back at 10:12:30 after a stop at 10:09: the latest slot (10:12) is on time too.
    // Back at 10:11:45 with LATE_AFTER = 60 s and an hourly schedule: late.
    let hourly = compile(&ScheduleSpec::new("0 0 * * * *"));
    assert_eq!(
        hourly.decide(t("2025-03-01T13:30:00Z"), t("2025-03-01T10:00:00Z"), false),
        Decision::Skip {
            due: Due {
                slot: t("2025-03-01T13:00:00Z"),
                catch_up: false,
                missed: 3
            },
            reason: SkipReason::Missed { missed: 3 }
        }
    );
    // Once that skip is recorded (anchor = 13:00) it waits for 14:00.
    assert_eq!(
        hourly.decide(t("2025-03-01T13:30:00Z"), t("2025-03-01T13:00:00Z"), false),
        Decision::Wait {
            until: Some(t("2025-03-01T14:00:00Z"))
        }
    );
}

#[test]
fn missed_run_once_catches_up_once() {
    let mut spec = ScheduleSpec::new("0 0 * * * *");
    spec.missed = MissedRunPolicy::RunOnce;
    let s = compile(&spec);
    let due = Due {
        slot: t("2025-03-01T13:00:00Z"),
        catch_up: true,
        missed: 3,
    };
    assert_eq!(
        s.decide(t("2025-03-01T13:30:00Z"), t("2025-03-01T10:00:00Z"), false),
        Decision::Fire(due)
    );
    // The catch-up obeys overlap like any fire.
    assert_eq!(
        s.decide(t("2025-03-01T13:30:00Z"), t("2025-03-01T10:00:00Z"), true),
        Decision::Skip {
            due,
            reason: SkipReason::Overlap
        }
    );
    // Nothing missed (down between slots): nothing to catch up.
    assert!(matches!(
        s.decide(t("2025-03-01T13:30:00Z"), t("2025-03-01T13:00:00Z"), false),
        Decision::Wait { .. }
    ));
}

#[test]
fn run_once_ignores_slots_that_fell_in_a_blackout() {
    let mut spec = ScheduleSpec::new("0 0 * * * *");
    spec.missed = MissedRunPolicy::RunOnce;
    spec.blackouts = vec![Blackout::window(
        t("2025-03-01T10:30:00Z"),
        t("2025-03-01T13:15:00Z"),
    )];
    let s = compile(&spec);
    // 11:00, 12:00 and 13:00 were all inside the freeze: no catch-up after it.
    assert_eq!(
        s.decide(t("2025-03-01T13:30:00Z"), t("2025-03-01T10:00:00Z"), false),
        Decision::Skip {
            due: Due {
                slot: t("2025-03-01T13:00:00Z"),
                catch_up: false,
                missed: 0
            },
            reason: SkipReason::Missed { missed: 0 }
        }
    );
    // And no catch-up starts inside a blackout either.
    let mut spec = ScheduleSpec::new("0 0 * * * *");
    spec.missed = MissedRunPolicy::RunOnce;
    spec.blackouts = vec![Blackout::window(
        t("2025-03-01T13:20:00Z"),
        t("2025-03-01T14:00:00Z"),
    )];
    let s = compile(&spec);
    assert!(matches!(
        s.decide(t("2025-03-01T13:30:00Z"), t("2025-03-01T10:00:00Z"), false),
        Decision::Skip {
            reason: SkipReason::Blackout(_),
            due: Due {
                catch_up: true,
                missed: 3,
                ..
            }
        }
    ));
}

#[test]
fn counting_missed_fires_is_bounded() {
    let s = compile(&ScheduleSpec::new("* * * * * *"));
    // A week of every-second slots: the count saturates instead of walking 604800
    // (and an every-second schedule is never late: its latest slot is always now).
    match s.decide(
        t("2025-03-08T00:00:00.5Z"),
        t("2025-03-01T00:00:00Z"),
        false,
    ) {
        Decision::Fire(due) => {
            assert_eq!(due.slot, t("2025-03-08T00:00:00Z"));
            assert_eq!(due.missed, MAX_COUNTED);
        }
        other => panic!("expected a fire, got {other:?}"),
    }
}

#[test]
fn a_cron_that_never_fires_answers_none() {
    let s = compile(&ScheduleSpec::new("0 0 0 30 2 *"));
    assert_eq!(s.next_fire(t("2025-01-01T00:00:00Z")), None);
}

#[test]
fn policies_parse_from_their_names() {
    assert_eq!("queue".parse::<OverlapPolicy>(), Ok(OverlapPolicy::Queue));
    assert_eq!(
        "run_once".parse::<MissedRunPolicy>(),
        Ok(MissedRunPolicy::RunOnce)
    );
    let e = "allow".parse::<OverlapPolicy>().unwrap_err();
    assert!(e.contains("skip, queue, replace"), "{e}");
}
