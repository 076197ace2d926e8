"""Built-in plugin ``inspect``: ``rt plugins``, ``rt stages`` and ``rt profiles``.

None of these imports torch: they read entry points, load only the selected
plugins (whose modules import nothing heavy at import time) and read TOML.
"""

from __future__ import annotations

import argparse
from typing import Any

from rt.core import hookimpl
from rt.core.cli_context import CliContext, print_json, print_table
from rt.core.config import to_dict
from rt.core.graph import check_graph
from rt.core.profile_registry import builtin_profiles, profile_description, profile_path


@hookimpl
def rt_register_commands(subparsers: Any) -> None:
    p = subparsers.add_parser("plugins", help="list installed plugins and which are selected")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=plugins_command)

    p = subparsers.add_parser("stages", help="list the startup stages and who implements them")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=stages_command)

    p = subparsers.add_parser("profiles", help="list profiles, or print one resolved")
    p.add_argument("name", nargs="?", help="a profile name or a path to a TOML file")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=profiles_command)


def _plugin_rows(cli: CliContext) -> list[dict[str, Any]]:
    selected = set(cli.selection.names)
    rows = []
    for entry in cli.catalog.plugins:
        plugin = cli.pm.get_plugin(entry.name) if entry.name in selected else None
        hooks = cli.pm.hooks_of(plugin) if plugin is not None else None
        rows.append(
            {
                "name": entry.name,
                "distribution": entry.dist,
                "version": entry.version,
                "kind": "builtin" if entry.builtin else "third-party",
                "selected": entry.name in selected,
                "blocked": entry.name in cli.selection.blocked,
                "hooks": hooks,
                "entry_point": entry.value,
            }
        )
    return rows


def plugins_command(args: argparse.Namespace, cli: CliContext) -> int:
    rows = _plugin_rows(cli)
    if args.json:
        print_json(rows)
        return 0
    table = []
    for r in rows:
        state = "blocked" if r["blocked"] else ("selected" if r["selected"] else "-")
        hooks = ", ".join(r["hooks"]) if r["hooks"] is not None else "(not loaded)"
        table.append((r["name"], r["kind"], f"{r['distribution']} {r['version']}", state, hooks))
    print_table(("name", "kind", "distribution", "state", "hooks"), table)
    return 0


def _stage_rows(cli: CliContext) -> list[dict[str, Any]]:
    origins = {e.name: e.dist for e in cli.selection.stages}
    rows = []
    for stage in check_graph(cli.stages):
        caller = getattr(cli.pm.hook, stage.hook, None)
        impls = [] if caller is None else caller.get_hookimpls()
        providers = [i.plugin_name for i in reversed(impls) if not (i.wrapper or i.hookwrapper)]
        rows.append(
            {
                "name": stage.name,
                "hook": stage.hook,
                "needs": list(stage.needs),
                "where": stage.where,
                "background": stage.background,
                "required": stage.required,
                "provided_by": providers,
                "distribution": origins.get(stage.name, "in-process"),
                "description": stage.description,
            }
        )
    return rows


def stages_command(args: argparse.Namespace, cli: CliContext) -> int:
    rows = _stage_rows(cli)
    if args.json:
        print_json(rows)
        return 0
    table = [
        (
            r["name"],
            r["hook"],
            ",".join(r["needs"]) or "-",
            r["where"],
            "yes" if r["background"] else "-",
            "yes" if r["required"] else "-",
            ", ".join(r["provided_by"]) or "(none)",
        )
        for r in rows
    ]
    print_table(("stage", "hook", "needs", "where", "background", "required", "provided by"), table)
    return 0


def profiles_command(args: argparse.Namespace, cli: CliContext) -> int:
    if args.name:
        path = profile_path(args.name)
        config = cli.config(args, profile=args.name)
        resolved = {"profile": args.name, "path": str(path), "config": to_dict(config)}
        if args.json:
            print_json(resolved)
        else:
            print(f"# profile {args.name} ({path}), resolved over the defaults")
            _print_toml(resolved["config"])
        return 0
    rows = [
        {"name": name, "description": profile_description(path), "path": str(path)}
        for name, path in sorted(builtin_profiles().items())
    ]
    if args.json:
        print_json(rows)
    else:
        print_table(("name", "description"), [(r["name"], r["description"]) for r in rows])
    return 0


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, str):
        return f'"{value}"'
    return str(value)


def _print_toml(config: dict[str, Any]) -> None:
    print(f"plugins = {_toml_value(config['plugins'])}")
    for section, values in config.items():
        if section == "plugins":
            continue
        print(f"\n[{section}]")
        for key, value in values.items():
            if value is None:
                print(f"# {key} is unset")
            else:
                print(f"{key} = {_toml_value(value)}")
