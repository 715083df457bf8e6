//! `hsm-sync lineage create` (CONTRACT.md §2, issue 16 item 8): the domain key made on a
//! token that has none, and the errors that point there. `lineage import` (issue 14 item
//! 6): the key ceremony that gives a SoftHSM and a Kryoptic token one domain key, and its
//! refusals, none of which shows a component or the key.

use crate::world::{Plan, Sel, World};

#[test]
fn lineage_create_makes_the_domain_key_once_and_missing_keys_point_to_it() {
    let w = World::new()
        .tokens(&["primary", "dr"])
        .key("primary", "01", "k", &[])
        .plan(&Plan::two_clusters().select(Sel::id("01")));
    // Without a domain key, the error says how to make one.
    let v = w.run(&["validate", "plan.yaml", "--online"]);
    assert_eq!(v.code, 1, "{v:?}");
    assert!(v.stderr.contains("no domain key labelled `hsm-sync-domain`"), "{v:?}");
    assert!(v.stderr.contains("hsm-sync lineage create PLAN primary"), "{v:?}");

    let c = w.run(&["lineage", "create", "plan.yaml", "primary"]);
    assert_eq!(c.code, 0, "{c:?}");
    assert!(
        c.stdout.contains("made domain key `hsm-sync-domain` on `primary`"),
        "{c:?}"
    );
    let fp = c
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("lineage fingerprint "))
        .expect("the fingerprint is printed")
        .to_string();
    let inv = w.run(&["inventory", "plan.yaml", "primary", "--format", "json"]);
    assert_eq!(inv.code, 0, "{inv:?}");
    assert_eq!(
        inv.json()["lineage_fingerprint"],
        fp.as_str(),
        "inventory shows the same lineage"
    );
    // Never extractable: the key is not listed among the keys hsm-sync could copy out.
    let objects = w.fixture(&["objects", "primary"]);
    assert_eq!(
        objects.lines().filter(|l| l.ends_with(" hsm-sync-domain")).count(),
        1,
        "{objects}"
    );

    // A second one would split the lineage: refused, naming the one there.
    let again = w.run(&["lineage", "create", "plan.yaml", "primary"]);
    assert_eq!(again.code, 1, "{again:?}");
    assert!(again.stderr.contains("already a (handle"), "{again:?}");
    let objects = w.fixture(&["objects", "primary"]);
    assert_eq!(
        objects.lines().filter(|l| l.ends_with(" hsm-sync-domain")).count(),
        1,
        "nothing was made"
    );

    let unknown = w.run(&["lineage", "create", "plan.yaml", "nowhere"]);
    assert_eq!(unknown.code, 1, "{unknown:?}");
    assert!(
        unknown.stderr.contains("cluster `nowhere` is not defined"),
        "{unknown:?}"
    );
}

/// Two custodians' components (64 hex digits each, as a ceremony sheet holds them) and the
/// key they XOR into, which must never be shown.
const C1: &str = "3b7e1f0c9a2d4e6f8a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f6071";
const C2: &str = "c4d2a1f0e9b8c7d6a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f00f1e";

/// C1 XOR C2, to look for in the output.
fn key_hex() -> String {
    let (a, b) = (hex(C1), hex(C2));
    a.iter().zip(&b).map(|(x, y)| format!("{:02x}", x ^ y)).collect()
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

/// A SoftHSM `primary` and a Kryoptic `dr`, with no domain key, the components in `c1.hex`
/// and `c2.hex` (one with a newline and spaces around it, as editors leave them), and an
/// AES key on the primary to sync.
fn ceremony_world() -> World {
    let w = World::new()
        .tokens(&["primary", "dr@kryoptic"])
        .key("primary", "a1", "aes-256", &[])
        .plan(&Plan::two_clusters().kryoptic("dr").select(Sel::label("*")));
    w.write("c1.hex", &format!("{C1}\n"));
    w.write("c2.hex", &format!("  {}\n\n", C2.to_uppercase()));
    w
}

/// `lineage import plan.yaml CLUSTER --components N --component-file F…`
fn import(w: &World, cluster: &str, n: usize, files: &[&str]) -> crate::world::Output {
    let n = n.to_string();
    let mut args = vec!["lineage", "import", "plan.yaml", cluster, "--components", &n];
    for f in files {
        args.extend(["--component-file", f]);
    }
    w.run(&args)
}

/// Both components, from their files.
const BOTH: &[&str] = &["c1.hex", "c2.hex"];

/// Neither a component nor the key, in any case, anywhere in what a run printed.
fn assert_no_secret(out: &crate::world::Output) {
    let all = format!("{}\n{}", out.stdout, out.stderr).to_lowercase();
    for secret in [C1.to_string(), C2.to_string(), key_hex()] {
        assert!(!all.contains(&secret), "a secret was printed: {out:?}");
        // Nor a recognisable piece of one.
        assert!(!all.contains(&secret[..16]), "part of a secret was printed: {out:?}");
    }
}

#[test]
fn lineage_import_gives_tokens_of_two_makes_one_domain_key() {
    let w = ceremony_world();
    let p = import(&w, "primary", 2, BOTH);
    assert_eq!(p.code, 0, "{p:?}");
    let d = import(&w, "dr", 2, BOTH);
    assert_eq!(d.code, 0, "{d:?}");
    for out in [&p, &d] {
        assert_no_secret(out);
    }
    assert!(
        p.stdout.contains("imported domain key `hsm-sync-domain` on `primary`"),
        "{p:?}"
    );
    assert!(
        d.stdout.contains("imported domain key `hsm-sync-domain` on `dr`"),
        "{d:?}"
    );
    // The check values are computed locally: the same on both makes, one per component.
    let kcvs = |o: &crate::world::Output| -> Vec<String> {
        o.stdout
            .lines()
            .filter(|l| l.starts_with("component "))
            .map(str::to_string)
            .collect()
    };
    assert_eq!(kcvs(&p).len(), 2, "{p:?}");
    assert_eq!(kcvs(&p), kcvs(&d));
    // AES-256-ECB of a zero block under C1, as `openssl enc -aes-256-ecb -nopad` gives it.
    assert_eq!(kcvs(&p)[0], "component 1 (c1.hex): check value 6f8686", "{p:?}");
    let fp = |o: &crate::world::Output| {
        o.stdout
            .lines()
            .find_map(|l| l.strip_prefix("lineage fingerprint "))
            .expect("the fingerprint is printed")
            .to_string()
    };
    assert_eq!(fp(&p), fp(&d), "one lineage on both makes");
    let inv = w.run(&["inventory", "plan.yaml", "dr", "--format", "json"]);
    assert_eq!(inv.code, 0, "{inv:?}");
    assert_eq!(
        inv.json()["lineage_fingerprint"],
        fp(&d).as_str(),
        "as inventory shows it"
    );

    // The proof, not the label: a session key wrapped on one make, unwrapped on the other.
    let v = w.run(&["validate", "plan.yaml", "--online"]);
    assert_eq!(v.code, 0, "{v:?}");
    assert!(v.stdout.contains("lineage proven: primary → dr"), "{}", v.stdout);
    let a = w.run(&["apply", "plan.yaml", "--report", "-"]);
    assert_eq!(a.code, 0, "{a:?}");
    assert_eq!(a.report().summary.create, 1, "{a:?}");
}

#[test]
fn lineage_import_refuses_a_token_that_has_a_domain_key() {
    let w = ceremony_world();
    assert_eq!(import(&w, "primary", 2, BOTH).code, 0);
    let again = import(&w, "primary", 2, BOTH);
    assert_eq!(again.code, 1, "{again:?}");
    assert!(again.stderr.contains("already a (handle"), "{again:?}");
    assert!(again.stderr.contains("nothing was imported"), "{again:?}");
    assert_no_secret(&again);
    let objects = w.fixture(&["objects", "primary"]);
    assert_eq!(
        objects.lines().filter(|l| l.ends_with(" hsm-sync-domain")).count(),
        1,
        "nothing was written: {objects}"
    );
    // Nor over a key `lineage create` made.
    let made = World::new()
        .tokens(&["primary", "dr"])
        .plan(&Plan::two_clusters().select(Sel::label("*")));
    made.write("c1.hex", C1);
    made.write("c2.hex", C2);
    let c = made.run(&["lineage", "create", "plan.yaml", "dr"]);
    assert_eq!(c.code, 0, "{c:?}");
    let over = import(&made, "dr", 2, BOTH);
    assert_eq!(over.code, 1, "{over:?}");
    assert!(over.stderr.contains("already a (handle"), "{over:?}");
}

#[test]
fn lineage_import_refuses_bad_components_naming_the_file() {
    let w = ceremony_world();
    let before = w.count("primary");
    w.write("short.hex", &C1[..62]);
    w.write("nothex.hex", &format!("{}zz", &C1[..62]));
    for (file, says) in [
        ("short.hex", "it holds 62 characters, not 64 hex digits"),
        ("nothex.hex", "character 63 is not a hex digit"),
    ] {
        let out = import(&w, "primary", 2, &["c1.hex", file]);
        assert_eq!(out.code, 1, "{out:?}");
        assert!(
            out.stderr.contains(&format!("component file {file}: {says}")),
            "{out:?}"
        );
        assert!(out.stderr.contains("nothing was written"), "{out:?}");
        assert_no_secret(&out);
    }
    let missing = import(&w, "primary", 2, &["c1.hex", "gone.hex"]);
    assert_eq!(missing.code, 1, "{missing:?}");
    assert!(
        missing.stderr.contains("cannot read component file gone.hex"),
        "{missing:?}"
    );
    // Two equal components cancel out: refused.
    let same = import(&w, "primary", 2, &["c1.hex", "c1.hex"]);
    assert_eq!(same.code, 1, "{same:?}");
    assert!(same.stderr.contains("cancel out"), "{same:?}");
    assert_eq!(w.count("primary"), before, "nothing was written");
}

#[test]
fn lineage_import_needs_two_components_and_a_terminal_for_the_missing() {
    let w = ceremony_world();
    let before = w.count("primary");
    let one = import(&w, "primary", 1, &["c1.hex"]);
    assert_eq!(one.code, 1, "{one:?}");
    assert!(one.stderr.contains("at least 2 components"), "{one:?}");
    assert!(one.stderr.contains("just the key in one person's hands"), "{one:?}");
    // The tests' standard input is not a terminal: the missing component is not read from
    // it, and the error says how many are missing and how to give them.
    let typed = import(&w, "primary", 3, &["c1.hex"]);
    assert_eq!(typed.code, 1, "{typed:?}");
    assert!(typed.stderr.contains("2 of 3 components missing"), "{typed:?}");
    assert!(typed.stderr.contains("--component-file FILE"), "{typed:?}");
    assert_eq!(w.count("primary"), before, "nothing was written");
}

/// A domain key whose lineage is not the one the plan pins is not the plan's: `lineage
/// create` takes it away again and exits 1, leaving the token as it found it.
#[test]
fn lineage_create_against_another_pin_leaves_no_key() {
    let w = World::new().tokens(&["primary", "dr"]).plan(
        &Plan::two_clusters()
            .select(Sel::id("01"))
            .edit("primary", |c| c.lineage_fingerprint = Some("0123456789abcdef".into())),
    );
    let c = w.run(&["lineage", "create", "plan.yaml", "primary"]);
    assert_eq!(c.code, 1, "{c:?}");
    assert!(
        c.stderr.contains("removed the domain key just made on `primary`"),
        "{c:?}"
    );
    let objects = w.fixture(&["objects", "primary"]);
    assert!(!objects.contains("hsm-sync-domain"), "no domain key left: {objects}");
    // The same plan without the pin makes it.
    let w = w.plan(&Plan::two_clusters().select(Sel::id("01")));
    assert_eq!(w.run(&["lineage", "create", "plan.yaml", "primary"]).code, 0);
}

#[test]
fn a_domain_key_that_cannot_wrap_or_two_of_them_are_named_with_their_handles() {
    // The search looks among keys that can wrap and unwrap first; one that cannot is
    // still found and named, with what it lacks.
    let w = World::new()
        .tokens(&["primary", "dr"])
        .domain_key(&["dr"])
        .key("primary", "01", "k", &[])
        .plan(&Plan::two_clusters().select(Sel::id("01")));
    let aes = "00112233445566778899aabbccddeeff";
    w.fixture(&[
        "import",
        "primary",
        "--id",
        "dd",
        "--label",
        "hsm-sync-domain",
        "--value",
        aes,
    ]);
    let v = w.run(&["validate", "plan.yaml", "--online"]);
    assert_eq!(v.code, 1, "{v:?}");
    assert!(v.stderr.contains("an unusable (handle"), "{v:?}");
    assert!(v.stderr.contains("CKA_WRAP and CKA_UNWRAP false"), "{v:?}");

    // Two usable ones split the lineage: both handles are named.
    let w = World::new()
        .tokens(&["primary", "dr"])
        .domain_key(&["primary", "dr"])
        .domain_key(&["primary"])
        .key("primary", "01", "k", &[])
        .plan(&Plan::two_clusters().select(Sel::id("01")));
    let v = w.run(&["validate", "plan.yaml", "--online"]);
    assert_eq!(v.code, 1, "{v:?}");
    assert!(v.stderr.contains("more than one (handle "), "{v:?}");
    assert!(v.stderr.contains("relabel or remove the extra object"), "{v:?}");
}
