//! The stack's tools as `make tools` installs them: once per machine, under
//! `~/.callchain/tools` (or `$CALLCHAIN_TOOLS`), at the versions `.env` names.

use std::path::{Path, PathBuf};

use crate::compose::read_workspace_file;

/// A tool installed under `~/.callchain/tools` (or `$CALLCHAIN_TOOLS`) at the
/// version `.env` names, or a message saying how to install it.
pub fn tool(version_var: &str, relative: impl Fn(&str) -> String, installer: &str) -> Result<PathBuf, String> {
    let env = read_workspace_file(".env").map_err(|err| err.to_string())?;
    let prefix = format!("{version_var}=");
    let version = env
        .lines()
        .find_map(|line| line.trim().strip_prefix(prefix.as_str()))
        .ok_or_else(|| format!(".env names no {version_var}"))?;
    let tools = std::env::var("CALLCHAIN_TOOLS").unwrap_or_else(|_| {
        let home = std::env::var("HOME").unwrap_or_default();
        format!("{home}/.callchain/tools")
    });
    let path = Path::new(&tools).join(relative(version));
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "{} is not installed: run `make tools` or `{installer}` (it is built or fetched from the package registries once per machine)",
            path.display()
        ))
    }
}

/// A path scripts/lib.sh names (`OTELCOL_BIN`, `VICTORIAMETRICS_BIN`, ...),
/// as the scripts compute it: the collector's folder is named by its builder
/// manifest's hash as well as its version.
pub fn script_tool(variable: &str, installer: &str) -> Result<PathBuf, String> {
    let lib = crate::compose::workspace_root().join("scripts/lib.sh");
    let output = std::process::Command::new("bash")
        .arg("-c")
        .arg(format!("source \"$0\" && printf %s \"${variable}\""))
        .arg(&lib)
        .output()
        .map_err(|err| format!("cannot run bash to read {}: {err}", lib.display()))?;
    let path = PathBuf::from(String::from_utf8_lossy(&output.stdout).into_owned());
    if output.status.success() && path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "{} is not installed: run `make tools` or `{installer}` (it is built once per machine)",
            path.display()
        ))
    }
}
