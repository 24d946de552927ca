"""The TOML config file: every ``start`` setting of the head and the provider, one section each.

```toml
[head]
data-dir = "/srv/zcompute"
dead-after = 20.0

[provider]
slots = 2
device = "cuda"
```

Keys are the long flag names (``dead-after``; ``dead_after`` works too). A group's ``--config FILE``
(``ZCOMPUTE_CONFIG``; default ``~/.zcompute/zcompute.toml`` when it exists, ``none`` for no file)
loads its section into click's ``ctx.default_map``, so click gives the precedence:
flag > ``ZCOMPUTE_*`` variable > file > default. ``config show`` prints what is in effect and why.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from common.config import ENV_PREFIX

ENV = ENV_PREFIX + "CONFIG"
DEFAULT_PATH = "~/.zcompute/zcompute.toml"
NO_FILE = "none"
SECTIONS = ("head", "provider")
SETTINGS_COMMAND = "start"  # the command whose options are "the settings"; the group's others share them
SECRET = {"join_text"}  # shown as "(hidden)"
BY_DEFAULT = "the default location"
_META = "zcompute.configfile"


@dataclass(frozen=True)
class Loaded:
    path: Path | None  # None: no file
    origin: str  # how it was chosen: "--config", ZCOMPUTE_CONFIG or BY_DEFAULT
    values: dict[str, Any] = field(default_factory=dict)  # parameter name -> value, as written

    def describe(self) -> str:
        if self.path is not None:
            return f"{self.path} (from {self.origin})"
        if self.origin == BY_DEFAULT:
            return f"none ({DEFAULT_PATH} does not exist)"
        return f"none ('{NO_FILE}' from {self.origin})"


def settings(command: click.Command) -> dict[str, click.Option]:
    """File key -> option: each long flag without its dashes (and the parameter name)."""
    keys: dict[str, click.Option] = {}
    for param in command.params:
        if not isinstance(param, click.Option) or param.name in (None, "help"):
            continue
        keys[param.name] = param
        for opt in param.opts:
            if opt.startswith("--"):
                keys[opt[2:]] = param
    return keys


def key_of(param: click.Option) -> str:
    return next((o[2:] for o in param.opts if o.startswith("--")), param.name)


def option(section: str):
    """The group's ``--config FILE``: loads ``[section]`` as the defaults of every subcommand."""
    if section not in SECTIONS:
        raise ValueError(f"unknown config section {section!r}")
    return click.option(
        "--config", "config_path", envvar=ENV, is_eager=True, expose_value=False, metavar="FILE",
        callback=partial(_load, section),
        help=f"TOML settings file, section [{section}] (default: {DEFAULT_PATH} if it exists; 'none': no file). "
             f"A flag or ZCOMPUTE_* variable wins over it.")


def _load(section: str, ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    origin = {ParameterSource.COMMANDLINE: "--config", ParameterSource.ENVIRONMENT: ENV}.get(
        ctx.get_parameter_source(param.name), BY_DEFAULT)
    path = Path(value or DEFAULT_PATH).expanduser().absolute()
    if value == NO_FILE or (value is None and not path.exists()):
        loaded = Loaded(None, origin)
    else:
        loaded = Loaded(path, origin, _read(ctx, section, path, param))
    ctx.meta[_META] = loaded
    commands = getattr(ctx.command, "commands", {})
    ctx.default_map = {**(ctx.default_map or {}), **{name: dict(loaded.values) for name in commands}}


def _read(ctx: click.Context, section: str, path: Path, param: click.Parameter) -> dict[str, Any]:
    def bad(message: str) -> click.BadParameter:
        return click.BadParameter(f"{path}: {message}", ctx=ctx, param=param)

    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise bad(f"cannot read it: {e.strerror or e}") from None
    except tomllib.TOMLDecodeError as e:
        raise bad(f"not valid TOML: {e}") from None
    unknown = sorted(set(data) - set(SECTIONS))
    if unknown:
        raise bad(f"unknown section [{unknown[0]}] (sections: {', '.join(f'[{s}]' for s in SECTIONS)})")
    table = data.get(section, {})
    if not isinstance(table, dict):
        raise bad(f"[{section}] must be a table")
    known = settings(ctx.command.commands[SETTINGS_COMMAND])
    values: dict[str, Any] = {}
    for key, raw in table.items():
        opt = known.get(key)
        if opt is None:
            names = ", ".join(sorted({key_of(p) for p in known.values()}))
            raise bad(f"[{section}] has no setting {key!r}; known: {names}")
        try:
            opt.type_cast_value(ctx, raw)
        except click.BadParameter as e:
            raise bad(f"[{section}] {key}: {e.message}") from None
        values[opt.name] = raw
    return values


def loaded(ctx: click.Context) -> Loaded:
    return ctx.find_root().meta.get(_META) or Loaded(None, BY_DEFAULT)


# -- what is in effect ----------------------------------------------------------------------


def effective(ctx: click.Context, args: list[str]) -> click.Context:
    """The settings command's context as ``SETTINGS_COMMAND ARGS`` would see it (not invoked)."""
    root = ctx.find_root()
    return root.command.commands[SETTINGS_COMMAND].make_context(SETTINGS_COMMAND, list(args), parent=root)


def source(sub: click.Context, param: click.Parameter) -> str:
    where = sub.get_parameter_source(param.name)
    if where is ParameterSource.COMMANDLINE:
        return "flag"
    if where is ParameterSource.ENVIRONMENT:
        names = [param.envvar] if isinstance(param.envvar, str) else list(param.envvar or [])
        return "env " + next((n for n in names if n in os.environ), names[0])
    if where is ParameterSource.DEFAULT_MAP:
        return f"file {loaded(sub).path}"
    return "default"


def _shown(param: click.Parameter, value: Any) -> str:
    if param.name in SECRET and value:
        return "(hidden)"
    if value is None:
        return "(auto)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (tuple, list)):  # a repeatable option
        return " ".join(map(str, value)) or "(none)"
    return str(value)


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(str(value))  # a JSON string is a TOML basic string


def show_lines(sub: click.Context, section: str, as_toml: bool) -> list[str]:
    params = [p for p in sub.command.params if isinstance(p, click.Option) and p.name != "help"]
    if as_toml:
        lines = [f"[{section}]"]
        for p in params:
            value = sub.params[p.name]
            if value is None or (p.name in SECRET and value):
                lines.append(f"# {key_of(p)} = ...  {_shown(p, value)}")
            else:
                lines.append(f"{key_of(p)} = {_toml(value)}")
        return lines
    rows = [(key_of(p), _shown(p, sub.params[p.name]), source(sub, p)) for p in params]
    width = [max(len(r[i]) for r in rows + [("SETTING", "VALUE", "")]) for i in range(2)]
    return [f"{'SETTING':<{width[0]}}  {'VALUE':<{width[1]}}  SOURCE"] + [
        f"{k:<{width[0]}}  {v:<{width[1]}}  {s}" for k, v, s in rows]


def config_group(section: str) -> click.Group:
    """``config show``: each setting of ``start``, its value and where it came from."""

    @click.group("config", help=f"The settings in effect: flags, ZCOMPUTE_* variables, [{section}] of the config "
                                f"file, defaults.")
    def group() -> None:
        pass

    program, flag = ("head-node", "--dead-after 30") if section == "head" else ("provider", "--slots 2")

    @group.command("show", context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
                   epilog=f"Example: {program} config show --toml {flag} > new.toml")
    @click.option("--toml", "as_toml", is_flag=True, help="Print a config file holding the settings in effect.")
    @click.argument("start_args", nargs=-1, type=click.UNPROCESSED)
    @click.pass_context
    def show(ctx: click.Context, as_toml: bool, start_args: tuple[str, ...]) -> None:
        """Print every setting of `start` in effect: value and source (flag, env, file, default).

        Flags given after `show` are read as `start` would read them.
        """
        info = loaded(ctx)
        sub = effective(ctx, list(start_args))
        if not as_toml:
            click.echo(f"config file: {info.describe()}")
        for line in show_lines(sub, section, as_toml):
            click.echo(line)

    return group


def command_line_args(sub: click.Context, skip: set[str] = frozenset()) -> list[str]:
    """The options of ``sub`` given as flags or variables, as flags again (for a service file)."""
    args: list[str] = []
    for p in sub.command.params:
        if not isinstance(p, click.Option) or p.name in skip or p.name == "help":
            continue
        if sub.get_parameter_source(p.name) not in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT):
            continue
        value = sub.params[p.name]
        if p.is_flag and p.secondary_opts:
            args.append(p.opts[0] if value else p.secondary_opts[0])
        elif p.is_flag:
            if value:
                args.append(p.opts[0])
        elif p.multiple:
            for item in value:
                args += ["--" + key_of(p), str(item)]
        else:
            args += ["--" + key_of(p), str(value)]
    return args


@dataclass(frozen=True)
class ServiceStart:
    """How a service runs ``start``: ``PROGRAM [group_args] start [start_args]``."""

    context: click.Context  # start's settings as the installing command saw them
    data_dir: Path
    group_args: list[str]
    start_args: list[str]


def service_start(ctx: click.Context, start_args: list[str]) -> ServiceStart:
    """Parse ``start``'s options for a service that will run it at every login.

    Options given as flags or ``ZCOMPUTE_*`` variables are written out (except the join, which
    ``start`` keeps in the data dir, and the data dir, made absolute). The config file is re-read by
    the service at each start; it is named only when chosen with ``--config`` or ``ZCOMPUTE_CONFIG``.
    """
    sub = effective(ctx, start_args)
    info = loaded(ctx)
    group_args = [] if info.origin == BY_DEFAULT else ["--config", str(info.path or NO_FILE)]
    data_dir = Path(sub.params["data_dir"]).expanduser().absolute()
    args = ["--data-dir", str(data_dir), *command_line_args(sub, skip={"join_text", "data_dir"})]
    return ServiceStart(sub, data_dir, group_args, args)
