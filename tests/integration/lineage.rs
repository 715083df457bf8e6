//! `hsm-sync lineage create` (CONTRACT.md §2, issue 16 item 8): the domain key made on a
//! token that has none, and the errors that point there.

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
