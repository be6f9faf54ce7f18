//! Settings as viper resolves them for the real binary: command-line flag, then `NUMARY_*`
//! environment variable (empty counts as unset), then the YAML config file
//! (`$HOME/.numary/numary.yaml`, then `/etc/numary/numary.yaml`), then the built-in default.
//! The YAML reader covers nested `key: value` maps, which is all the documented config uses.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub struct Config {
    flags: BTreeMap<String, String>,
    file: BTreeMap<String, String>,
    /// What `viper.ReadInConfig` returned, when it failed (printed by 1.4.3+).
    pub load_error: Option<String>,
    pub home: String,
}

pub fn env_name(key: &str) -> String {
    format!("NUMARY_{}", key.to_uppercase().replace(['.', '-'], "_"))
}

impl Config {
    /// Reads the config file; flags are set later, once the command line is parsed.
    pub fn load() -> Self {
        let home = std::env::var("HOME").unwrap_or_default();
        let search = [
            absolute(&format!("{home}/.numary")),
            PathBuf::from("/etc/numary"),
        ];
        let found = search.iter().find_map(|dir| {
            ["json", "toml", "yaml", "yml"]
                .iter()
                .map(|ext| dir.join(format!("numary.{ext}")))
                .find(|p| p.is_file())
        });
        let (file, load_error) = match found {
            Some(path) => match std::fs::read_to_string(&path)
                .map_err(|e| e.to_string())
                .and_then(|text| parse_yaml(&text))
            {
                Ok(map) => (map, None),
                Err(e) => (BTreeMap::new(), Some(format!("While parsing config: {e}"))),
            },
            None => (
                BTreeMap::new(),
                Some(format!(
                    "Config File \"numary\" Not Found in \"[{} {}]\"",
                    search[0].display(),
                    search[1].display()
                )),
            ),
        };
        Self {
            flags: BTreeMap::new(),
            file,
            load_error,
            home,
        }
    }

    pub fn set_flags(&mut self, flags: BTreeMap<String, String>) {
        self.flags = flags;
    }

    /// The raw value of `key`, or `None` when only the default applies.
    pub fn lookup(&self, key: &str) -> Option<String> {
        if let Some(v) = self.flags.get(key) {
            return Some(v.clone());
        }
        if let Ok(v) = std::env::var(env_name(key))
            && !v.is_empty()
        {
            return Some(v);
        }
        self.file.get(key).cloned()
    }

    pub fn get(&self, key: &str, default: &str) -> String {
        self.lookup(key).unwrap_or_else(|| default.to_owned())
    }

    pub fn driver(&self) -> String {
        self.get("storage.driver", "sqlite")
    }

    pub fn storage_dir(&self) -> PathBuf {
        // Go's os.UserHomeDir fails on an empty $HOME; the real code then uses /root.
        let home = if self.home.is_empty() {
            "/root"
        } else {
            &self.home
        };
        PathBuf::from(self.get("storage.dir", &format!("{home}/.numary/data")))
    }

    pub fn db_name(&self) -> String {
        self.get("storage.sqlite.db_name", "numary")
    }

    pub fn conn_string(&self) -> String {
        self.get(
            "storage.postgres.conn_string",
            "postgresql://localhost/postgres",
        )
    }

    pub fn bind_address(&self) -> String {
        self.get("server.http.bind_address", "localhost:3068")
    }
}

fn absolute(path: &str) -> PathBuf {
    let p = Path::new(path);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(p))
            .unwrap_or_else(|_| p.to_path_buf())
    }
}

/// Nested YAML maps of scalars flattened to viper's dotted, lower-cased keys.
pub fn parse_yaml(text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    let mut stack: Vec<(usize, String)> = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let line = strip_comment(raw);
        if line.trim().is_empty() || line.trim() == "---" {
            continue;
        }
        let indent = line.len() - line.trim_start().len();
        let trimmed = line.trim();
        if trimmed.starts_with("- ") || trimmed == "-" {
            continue; // sequences are not needed by any setting the simulator reads
        }
        let Some((key, value)) = trimmed.split_once(':') else {
            return Err(format!(
                "yaml: line {}: could not find expected ':'",
                index + 1
            ));
        };
        while stack.last().is_some_and(|(level, _)| *level >= indent) {
            stack.pop();
        }
        let key = unquote(key.trim()).to_lowercase();
        let mut full: Vec<&str> = stack.iter().map(|(_, k)| k.as_str()).collect();
        full.push(&key);
        let full = full.join(".");
        let value = value.trim();
        if value.is_empty() {
            stack.push((indent, key));
        } else {
            out.insert(full, unquote(value).to_owned());
        }
    }
    Ok(out)
}

fn strip_comment(line: &str) -> &str {
    let mut quote = None;
    for (i, c) in line.char_indices() {
        match (c, quote) {
            ('\'' | '"', None) => quote = Some(c),
            (c, Some(q)) if c == q => quote = None,
            ('#', None) if i == 0 || line[..i].ends_with(' ') => return &line[..i],
            _ => {}
        }
    }
    line
}

fn unquote(value: &str) -> &str {
    let bytes = value.as_bytes();
    if bytes.len() >= 2
        && (bytes[0] == b'"' || bytes[0] == b'\'')
        && bytes[bytes.len() - 1] == bytes[0]
    {
        &value[1..value.len() - 1]
    } else {
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_keys_flatten_like_viper() {
        let map = parse_yaml(
            "storage:\n  driver: postgres\n  postgres:\n    conn_string: \"postgresql://u:p@db/l\" # x\nserver:\n  http:\n    bind_address: 0.0.0.0:3068\nlock-strategy: redis\n",
        )
        .unwrap();
        assert_eq!(map["storage.driver"], "postgres");
        assert_eq!(map["storage.postgres.conn_string"], "postgresql://u:p@db/l");
        assert_eq!(map["server.http.bind_address"], "0.0.0.0:3068");
        assert_eq!(map["lock-strategy"], "redis");
    }

    #[test]
    fn garbage_is_a_parse_error() {
        assert!(parse_yaml("storage\n  driver postgres\n").is_err());
    }

    #[test]
    fn env_names_follow_the_replacer() {
        assert_eq!(
            env_name("storage.sqlite.db_name"),
            "NUMARY_STORAGE_SQLITE_DB_NAME"
        );
        assert_eq!(env_name("lock-strategy"), "NUMARY_LOCK_STRATEGY");
    }
}
