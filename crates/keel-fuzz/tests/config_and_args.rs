//! The node's configuration and both command lines: a TOML file given to `keel --config` (read,
//! merged over the flags and checked by keel-server's `Config::from_args`, exactly as `keel`
//! starts), `keel`'s argv, and `keelctl`'s argv. Arbitrary text and argv built from the real
//! flag names with extreme values: a usage or configuration error is fine, a panic is not (a
//! node must refuse a bad setting with one line, not a backtrace).
//!
//! keelctl is a binary crate; its `args.rs` needs nothing but clap and humantime, so it is
//! compiled into this target as it is (`#[path]`), and the parser tested is keelctl's own.

use clap::{CommandFactory, Parser};
use keel_fuzz::{check, gen, Cost};
use keel_server::config::{Config, Settings};
use proptest::collection::vec;
use proptest::prelude::*;

#[allow(dead_code)]
#[path = "../../keel-cli/src/args.rs"]
mod keelctl_args;

/// Every long flag of a clap command and of its subcommands, and the subcommand names.
fn words(cmd: &clap::Command) -> Vec<String> {
    let mut out = Vec::new();
    for a in cmd.get_arguments() {
        if let Some(l) = a.get_long() {
            out.push(format!("--{l}"));
        }
        if let Some(s) = a.get_short() {
            out.push(format!("-{s}"));
        }
    }
    for sub in cmd.get_subcommands() {
        out.push(sub.get_name().to_string());
        out.extend(words(sub));
    }
    out.sort();
    out.dedup();
    out
}

/// Values that break parsers: numbers at and past the edges, durations past the clock's range,
/// addresses and member lists that are almost right, and arbitrary text.
fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => gen::edge_u64().prop_map(|n| n.to_string()),
        2 => gen::edge_i64().prop_map(|n| n.to_string()),
        2 => Just(u64::MAX.to_string()),
        1 => Just("18446744073709551616".to_string()),
        1 => Just("1-0".to_string()),
        1 => Just("0-18446744073709551615".to_string()),
        1 => Just("1=127.0.0.1:7101,1=127.0.0.1:7102".to_string()),
        1 => Just("0=:".to_string()),
        1 => Just("[::1]:99999".to_string()),
        1 => Just("127.0.0.1:0".to_string()),
        1 => Just("999999999999y".to_string()),
        1 => Just("584542047y".to_string()),
        1 => Just("1ns".to_string()),
        1 => Just("0x7fffffffffffffff".to_string()),
        1 => Just("0x".to_string()),
        1 => Just("--".to_string()),
        1 => Just(String::new()),
        3 => ".{0,12}",
    ]
}

/// Mostly `--flag value` pairs (so that a bad value is what the parser meets, not an unknown
/// word), some lone flags and words.
fn argv(flags: Vec<String>) -> impl Strategy<Value = Vec<String>> {
    let flag = proptest::sample::select(flags);
    let item = prop_oneof![
        4 => (flag.clone(), value()).prop_map(|(f, v)| vec![f, v]),
        1 => flag.prop_map(|f| vec![f]),
        1 => value().prop_map(|v| vec![v]),
    ];
    vec(item, 0..4).prop_map(|items| items.concat())
}

/// keel's argv through the node's own parse-and-resolve, with a data dir (so that resolution
/// goes past the first check) and without.
#[test]
fn keel_argv() {
    let flags = words(&Settings::command());
    check(
        "keel_argv",
        Cost::Moderate,
        (argv(flags), any::<bool>()),
        |(args, with_basics)| {
            let mut full = vec!["keel".to_string()];
            if with_basics {
                full.extend(["--id", "1", "--data-dir", "/nonexistent/keel-fuzz"].map(String::from));
            }
            full.extend(args);
            let _ = keel_fuzz::no_panic("Config::from_args", || Config::from_args(full).map(drop))?;
            Ok(())
        },
    );
}

/// A TOML line for `key` with a value of any type and size.
fn toml_line(keys: Vec<String>) -> impl Strategy<Value = String> {
    let value = prop_oneof![
        gen::edge_u64().prop_map(|n| n.to_string()),
        gen::edge_i64().prop_map(|n| n.to_string()),
        value().prop_map(|s| format!("{s:?}")),
        Just("true".to_string()),
        Just("1.5e300".to_string()),
        Just("-inf".to_string()),
        Just("1979-05-27T07:32:00Z".to_string()),
        Just("[1, 2, \"x\"]".to_string()),
        Just("{ a = 1 }".to_string()),
    ];
    (proptest::sample::select(keys), value).prop_map(|(k, v)| format!("{k} = {v}\n"))
}

/// `keel --config FILE`: random text, and files made of real keys with values of every type.
#[test]
fn keel_config_file() {
    let keys: Vec<String> = Settings::command()
        .get_arguments()
        .map(|a| a.get_id().to_string())
        .chain(["not_a_setting".to_string(), "config".to_string()])
        .collect();
    let text = prop_oneof![
        vec(toml_line(keys), 0..8).prop_map(|lines| lines.concat()),
        ".{0,200}",
        gen::bytes(200).prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
        Just("[table]\nkey = 1\n".to_string()),
        Just(
            "a = [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]"
                .to_string()
        ),
    ];
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("keel.toml");
    check("keel_config_file", Cost::Moderate, text, |text| {
        std::fs::write(&path, &text).expect("write");
        let args = [
            "keel",
            "--id",
            "1",
            "--data-dir",
            "/nonexistent/keel-fuzz",
            "--config",
            path.to_str().expect("utf-8 path"),
        ];
        let _ = keel_fuzz::no_panic("Config::from_args --config", || Config::from_args(args).map(drop))?;
        Ok(())
    });
}

/// keelctl's argv through keelctl's own parser.
#[test]
fn keelctl_argv() {
    keelctl_args::Cli::command().debug_assert();
    let flags = words(&keelctl_args::Cli::command());
    check("keelctl_argv", Cost::Moderate, argv(flags), |args| {
        let full = std::iter::once("keelctl".to_string()).chain(args);
        let _ = keel_fuzz::no_panic("keelctl argument parsing", || {
            keelctl_args::Cli::try_parse_from(full).map(drop)
        })?;
        Ok(())
    });
}
