//! The key ceremony of `lineage import` (CONTRACT.md §2, issue 14 item 6): key components,
//! each held by one custodian, read from files or typed at the terminal without echo,
//! checked, and XORed into the value of the domain key that tokens of different makes then
//! share. What it hands on is a value in a wiping buffer and a check value per component;
//! a component or the key is never printed, logged or written anywhere.

use std::io::Read;
use std::path::{Path, PathBuf};

use aes::cipher::{generic_array::GenericArray, BlockEncrypt, KeyInit};
use miette::Diagnostic;
use zeroize::Zeroizing;

/// The length of a component and of the key it makes: AES-256.
pub(crate) const COMPONENT_LEN: usize = 32;

/// The fewest components a ceremony takes: one is the whole key in one person's hands.
pub(crate) const MIN_COMPONENTS: usize = 2;

/// A component file larger than this is not a component (64 hex digits and whitespace);
/// refused before it is read, so a wrong path never pulls a large file into memory.
const MAX_FILE_LEN: u64 = 4096;

/// Why the components could not be had. Never carries a component or any part of one.
#[derive(Debug, thiserror::Error, Diagnostic)]
pub(crate) enum CeremonyError {
    /// `--components` below two.
    #[error("--components {0}: a key ceremony needs at least 2 components; nothing was written")]
    #[diagnostic(
        code(lineage::too_few_components),
        help("a single component is just the key in one person's hands: split it among two or more custodians (--components 2 or more)")
    )]
    TooFewComponents(usize),
    /// More `--component-file`s than `--components`.
    #[error("{files} --component-file given for --components {n}; nothing was written")]
    #[diagnostic(
        code(lineage::too_many_component_files),
        help("give one file per component at most; the rest are typed at the terminal")
    )]
    TooManyFiles {
        /// How many files were given.
        files: usize,
        /// How many components the ceremony has.
        n: usize,
    },
    /// A component file cannot be read.
    #[error("cannot read component file {path}: {source}; nothing was written")]
    #[diagnostic(code(lineage::component_unreadable))]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A component is not 64 hex digits.
    #[error("{what}: {problem}; nothing was written")]
    #[diagnostic(
        code(lineage::bad_component),
        help("a component is 32 bytes written as exactly 64 hex digits (0-9, a-f); surrounding whitespace and newlines are ignored")
    )]
    BadComponent {
        /// Which component: its file, or its position when typed.
        what: String,
        /// What is wrong with it (its length, or where a non-hex character is; never the character).
        problem: String,
    },
    /// A component is all zeros: it adds nothing to the key.
    #[error("{0} is all zeros, which adds nothing to the key; nothing was written")]
    #[diagnostic(code(lineage::bad_component), help("each custodian's component must be random"))]
    ZeroComponent(String),
    /// Two components are equal: in the XOR they cancel out.
    #[error("{first} and {second} are the same component, which cancel out in the XOR; nothing was written")]
    #[diagnostic(
        code(lineage::bad_component),
        help("each custodian's component must be generated on its own")
    )]
    SameComponents {
        /// The first of them.
        first: String,
        /// The second.
        second: String,
    },
    /// Components are missing and there is no terminal to type them at.
    #[error("{missing} of {n} components missing, and standard input is not a terminal to type them at; nothing was written")]
    #[diagnostic(
        code(lineage::components_missing),
        help("give each with --component-file FILE (in order, one per component), or run at a terminal, where the missing ones are typed without echo; hsm-sync never reads components from a pipe")
    )]
    NoTerminal {
        /// How many are missing.
        missing: usize,
        /// How many the ceremony has.
        n: usize,
    },
    /// Typing a component at the terminal failed.
    #[error("reading component {index} at the terminal: {source}; nothing was written")]
    #[diagnostic(code(lineage::terminal))]
    Terminal {
        /// Its 1-based position.
        index: usize,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// One checked component, and where it came from (for messages and the check-value line).
pub(crate) struct Component {
    value: Zeroizing<[u8; COMPONENT_LEN]>,
    /// Its file, or `typed` when it was typed at the terminal.
    pub(crate) from: String,
}

impl Component {
    /// The component's check value: AES-256-ECB of a zero block under it, first 3 bytes,
    /// hex (the KCV custodians compare with the one written beside their component).
    pub(crate) fn check_value(&self) -> String {
        check_value(&self.value)
    }
}

/// Where the missing components come from: the terminal, asked by 1-based position.
pub(crate) trait Typed {
    /// Whether there is a terminal to type at.
    fn available(&self) -> bool;
    /// Reads component `index` of `n`, without echo.
    fn read(&mut self, index: usize, n: usize) -> std::io::Result<Zeroizing<String>>;
}

/// The real terminal: components typed without echo through `rpassword`, which reads the
/// controlling terminal. Only when standard input is one: a script or CI job with
/// components missing fails at once instead of waiting for a terminal no one watches.
pub(crate) struct Terminal;

impl Typed for Terminal {
    fn available(&self) -> bool {
        use std::io::IsTerminal;
        std::io::stdin().is_terminal()
    }

    fn read(&mut self, index: usize, n: usize) -> std::io::Result<Zeroizing<String>> {
        rpassword::prompt_password(format!("component {index} of {n} (64 hex digits, not shown): ")).map(Zeroizing::new)
    }
}

/// Checks that `n` components can be had (`n` ≥ 2, no more files than `n`, a terminal for
/// the rest), before anything is read or any token is touched.
pub(crate) fn check_count(n: usize, files: usize, typed: &dyn Typed) -> Result<(), CeremonyError> {
    if n < MIN_COMPONENTS {
        return Err(CeremonyError::TooFewComponents(n));
    }
    if files > n {
        return Err(CeremonyError::TooManyFiles { files, n });
    }
    if files < n && !typed.available() {
        return Err(CeremonyError::NoTerminal { missing: n - files, n });
    }
    Ok(())
}

/// Reads and checks every component file, in order.
pub(crate) fn read_files(files: &[PathBuf]) -> Result<Vec<Component>, CeremonyError> {
    files.iter().map(|f| read_file(f)).collect()
}

/// Asks for components `have + 1 ..= n` at the terminal.
pub(crate) fn read_typed(have: usize, n: usize, typed: &mut dyn Typed) -> Result<Vec<Component>, CeremonyError> {
    (have + 1..=n)
        .map(|index| {
            let text = typed
                .read(index, n)
                .map_err(|source| CeremonyError::Terminal { index, source })?;
            let value = parse(text.as_bytes(), &format!("component {index} (typed)"))?;
            Ok(Component {
                value,
                from: "typed".into(),
            })
        })
        .collect()
}

/// XORs checked components into the key value, refusing a set that makes a weak key: a
/// zero component, or two equal ones (they cancel out).
pub(crate) fn combine(components: &[Component]) -> Result<Zeroizing<Vec<u8>>, CeremonyError> {
    let name = |i: usize, c: &Component| {
        if c.from == "typed" {
            format!("component {} (typed)", i + 1)
        } else {
            format!("component {} ({})", i + 1, c.from)
        }
    };
    for (i, c) in components.iter().enumerate() {
        if c.value.iter().all(|b| *b == 0) {
            return Err(CeremonyError::ZeroComponent(name(i, c)));
        }
        if let Some((j, d)) = components
            .iter()
            .enumerate()
            .skip(i + 1)
            .find(|(_, d)| d.value == c.value)
        {
            return Err(CeremonyError::SameComponents {
                first: name(i, c),
                second: name(j, d),
            });
        }
    }
    let mut key = Zeroizing::new(vec![0u8; COMPONENT_LEN]);
    for c in components {
        for (k, b) in key.iter_mut().zip(c.value.iter()) {
            *k ^= b;
        }
    }
    Ok(key)
}

/// The check value of a 32-byte key: AES-256-ECB of a zero block, first 3 bytes, hex.
fn check_value(key: &[u8; COMPONENT_LEN]) -> String {
    let cipher = aes::Aes256::new(GenericArray::from_slice(key));
    let mut block = GenericArray::default();
    cipher.encrypt_block(&mut block);
    hex::encode(&block[..3])
}

fn read_file(path: &Path) -> Result<Component, CeremonyError> {
    let err = |source| CeremonyError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut f = std::fs::File::open(path).map_err(err)?;
    let len = f.metadata().map_err(err)?.len();
    if len > MAX_FILE_LEN {
        return Err(CeremonyError::BadComponent {
            what: format!("component file {}", path.display()),
            problem: format!("it is {len} bytes long, too long for one component"),
        });
    }
    // Sized up front, so reading never reallocates and leaves an unwiped copy behind.
    let mut text = Zeroizing::new(Vec::with_capacity(MAX_FILE_LEN as usize + 1));
    f.by_ref().take(MAX_FILE_LEN + 1).read_to_end(&mut text).map_err(err)?;
    let value = parse(&text, &format!("component file {}", path.display()))?;
    Ok(Component {
        value,
        from: path.display().to_string(),
    })
}

/// 64 hex digits (surrounding whitespace trimmed) → 32 bytes. Errors say where, never what.
fn parse(text: &[u8], what: &str) -> Result<Zeroizing<[u8; COMPONENT_LEN]>, CeremonyError> {
    let bad = |problem: String| CeremonyError::BadComponent {
        what: what.to_string(),
        problem,
    };
    let hexits = text.trim_ascii();
    if hexits.len() != 2 * COMPONENT_LEN {
        return Err(bad(format!(
            "it holds {} characters, not {} hex digits",
            hexits.len(),
            2 * COMPONENT_LEN
        )));
    }
    let mut value = Zeroizing::new([0u8; COMPONENT_LEN]);
    // Decoded by hand: hex's own error names the offending character, a piece of a secret.
    for (i, pair) in hexits.chunks_exact(2).enumerate() {
        let digit = |k: usize| {
            (pair[k] as char)
                .to_digit(16)
                .ok_or_else(|| bad(format!("character {} is not a hex digit", 2 * i + k + 1)))
        };
        value[i] = (digit(0)? * 16 + digit(1)?) as u8;
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn component(hex: &str) -> Component {
        Component {
            value: parse(hex.as_bytes(), "test").expect("a valid component"),
            from: "test".into(),
        }
    }

    #[test]
    fn the_check_value_of_the_zero_key_is_the_known_answer() {
        // FIPS-197-style known answer: AES-256 of the zero block under the zero key is
        // dc95c078a2408989ad48a21492842087.
        assert_eq!(check_value(&[0u8; 32]), "dc95c0");
        // And one that is not all zeros (checked with `openssl enc -aes-256-ecb -nopad`).
        assert_eq!(check_value(&[0x0f; 32]), "55feb8");
    }

    #[test]
    fn components_xor_into_the_key() {
        let a = component(&"0f".repeat(32));
        let b = component(&format!("\n  {}\r\n", "f1".repeat(32)));
        let key = combine(&[a, b]).expect("combines");
        assert_eq!(key.as_slice(), [0xfe; 32].as_slice());
        let c = component(&"AB".repeat(32));
        assert_eq!(c.value.as_slice(), [0xab; 32].as_slice(), "upper case is hex too");
    }

    #[test]
    fn bad_components_say_where_never_what() {
        let short = parse("ab".as_bytes(), "component file c1").expect_err("refused");
        assert_eq!(
            short.to_string(),
            "component file c1: it holds 2 characters, not 64 hex digits; nothing was written"
        );
        let text = format!("{}zz", "a".repeat(62));
        let e = parse(text.as_bytes(), "component file c1")
            .expect_err("refused")
            .to_string();
        assert_eq!(
            e,
            "component file c1: character 63 is not a hex digit; nothing was written"
        );
        assert!(!e.contains('z'));
    }

    #[test]
    fn weak_sets_are_refused() {
        let same = combine(&[component(&"12".repeat(32)), component(&"12".repeat(32))]);
        assert!(matches!(same, Err(CeremonyError::SameComponents { .. })));
        let zero = combine(&[component(&"00".repeat(32)), component(&"12".repeat(32))]);
        assert!(matches!(zero, Err(CeremonyError::ZeroComponent(_))));
    }

    struct NoTty;
    impl Typed for NoTty {
        fn available(&self) -> bool {
            false
        }
        fn read(&mut self, _: usize, _: usize) -> std::io::Result<Zeroizing<String>> {
            Err(std::io::ErrorKind::NotFound.into())
        }
    }

    struct Keys(Vec<String>);
    impl Typed for Keys {
        fn available(&self) -> bool {
            true
        }
        fn read(&mut self, index: usize, _: usize) -> std::io::Result<Zeroizing<String>> {
            Ok(Zeroizing::new(self.0[index - 1].clone()))
        }
    }

    #[test]
    fn the_count_is_checked_before_anything_is_read() {
        assert!(matches!(
            check_count(1, 1, &NoTty),
            Err(CeremonyError::TooFewComponents(1))
        ));
        assert!(matches!(
            check_count(2, 3, &NoTty),
            Err(CeremonyError::TooManyFiles { .. })
        ));
        assert!(matches!(
            check_count(3, 1, &NoTty),
            Err(CeremonyError::NoTerminal { missing: 2, n: 3 })
        ));
        assert!(check_count(2, 2, &NoTty).is_ok());
        assert!(check_count(2, 0, &Keys(vec![])).is_ok());
    }

    #[test]
    fn typed_components_follow_the_files() {
        let mut t = Keys(vec![String::new(), "ab".repeat(32), "cd".repeat(32)]);
        let typed = read_typed(1, 3, &mut t).expect("typed");
        assert_eq!(typed.len(), 2);
        assert_eq!(typed[0].value.as_slice(), [0xab; 32].as_slice());
        assert_eq!(typed[1].from, "typed");
    }
}
