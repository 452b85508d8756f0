"""Shell completion for bash and zsh, generated from the option table (see :mod:`.reference`).

Both scripts walk the words before the cursor as the command line reads them (global options
anywhere, an option's value with it, ``-c`` taking a number only when one follows, each command
taking as many arguments as :data:`options.COMMANDS` says before the next command of the chain,
everything after ``run`` the command's own) and offer what may come next: commands, options
(global and the current command's), ``pkg`` actions, snapshot numbers, paths.  Snapshot numbers
come from ``transactional-update [--root DIR] list --json`` (the click-free quick path), a list
of objects pretty-printed with two spaces, so each snapshot's ``"number"`` key stands at an
indent of four; a test holds that to :func:`status.list_json`.

Shipped as ``completions/bash/transactional-update`` and ``completions/zsh/_transactional-update``
(``python -m transactional_update.cli.generate`` rewrites them).
"""

from __future__ import annotations

import shlex

from transactional_update.cli import options as table
from transactional_update.cli import reference
from transactional_update.cli.reference import Command, Opt, Slot

HEADER = (
    "# Generated from the option table of transactional_update/cli/options.py by\n"
    f"# `{reference.REGENERATE}`; do not edit.\n"
)
# sed program that prints the snapshot numbers of `list --json` (see the module's docstring).
NUMBERS_SED = r's/^    "number": \([0-9][0-9]*\),\{0,1\}$/\1/p'


def _words(names: list[str] | tuple[str, ...]) -> str:
    return " ".join(names)


def _pattern(names: list[str] | tuple[str, ...]) -> str:
    """A ``case`` pattern matching exactly *names* (quoted: ``grub.cfg`` and the like)."""
    return "|".join(shlex.quote(n) for n in names) or "''"


def _names(cmd: Command) -> tuple[str, ...]:
    return (cmd.name, *cmd.aliases)


def _arity(cmd: Command) -> int:
    """-2 for ``run`` (the rest of the line), -1 for any number of arguments."""
    if cmd.arity == table.RAW:
        return -2
    return -1 if cmd.arity is None else cmd.arity


def _value_options(opts: list[Opt]) -> dict[str, list[str]]:
    """Hint -> the names of the options taking a value completed that way."""
    out: dict[str, list[str]] = {}
    for opt in opts:
        if opt.takes_value:
            out.setdefault(opt.hint, []).extend(opt.names)
    return out


def _all_options(cmds: tuple[Command, ...]) -> list[Opt]:
    return [*reference.global_options(), *(o for c in cmds for o in c.options)]


def _slot_cases_bash(cmd: Command) -> list[str]:
    """``case $n in`` branches for each argument position of *cmd*."""
    lines = []
    for i, slot in enumerate(cmd.slots):
        pattern = "*" if slot.many else str(i)
        optional = int(not slot.required or slot.many)
        lines.append(
            f"                {pattern}) words={shlex.quote(_words(slot.words))}; "
            f"hint={slot.hint}; optional={optional} ;;"
        )
        if slot.many:
            break
    return lines


def bash() -> str:
    cmds = reference.commands()
    names = [n for c in cmds for n in _names(c)]
    globals_ = reference.global_options()
    value_opts = _value_options(_all_options(cmds))
    optional_number = [n for o in _all_options(cmds) if o.optional_value for n in o.names]
    takes_value = [n for names_ in value_opts.values() for n in names_]

    arity_cases = [
        f"        {_pattern(_names(c))}) arity={_arity(c)} ;;" for c in cmds if _arity(c) != 0
    ]
    own_cases = [
        f"            {_pattern(_names(c))}) opts+={_own(c)} ;;" for c in cmds if c.options
    ]
    slot_cases = []
    for c in cmds:
        branches = _slot_cases_bash(c)
        if branches:
            slot_cases += [
                f"            {_pattern(_names(c))})",
                "            case $n in",
                *branches,
                "            esac ;;",
            ]
    value_cases = [
        f"            {_pattern(opt_names)}) hint={hint} ;;"
        for hint, opt_names in value_opts.items()
    ]

    return f"""# bash completion for transactional-update(8)
{HEADER}
# The snapshot numbers of the system, or of the one at --root DIR: from `list --json`, whose
# objects have their "number" key at an indent of four spaces.
_transactional_update_snapshots() {{
    "$1" ${{2:+--root "$2"}} list --json 2>/dev/null | sed -n '{NUMBERS_SED}'
}}

# How many arguments a command takes before the next command of the chain: -1 any number,
# -2 the rest of the line (run).
_transactional_update_arity() {{
    arity=0
    case $1 in
{chr(10).join(arity_cases)}
    esac
}}

_transactional_update() {{
    local cur=${{COMP_WORDS[COMP_CWORD]}} prev=${{COMP_WORDS[COMP_CWORD-1]}}
    local commands={shlex.quote(_words(names))}
    local w root="" cmd="" opt="" n=0 i arity=0 words="" hint=none optional=0 opts
    COMPREPLY=()
    for ((i = 1; i < COMP_CWORD; i++)); do
        w=${{COMP_WORDS[i]}}
        if ((arity == -2)); then  # after run: the command's own words
            [[ $n == 0 && $w == -- ]] || n=$((n + 1))
            continue
        fi
        if [[ -n $opt ]]; then  # the value of option $opt (--root=DIR arrives as --root = DIR)
            [[ $w == = ]] && continue
            [[ $opt == --root ]] && root=$w
            opt=""
            continue
        fi
        case $w in
            --root=*) root=${{w#--root=}}; continue ;;
            {_pattern(optional_number)})
                if ((i + 1 < COMP_CWORD)) && [[ ${{COMP_WORDS[i+1]}} =~ ^[0-9]+$ ]]; then
                    i=$((i + 1))
                fi
                continue ;;
            {_pattern(takes_value)}) opt=$w; continue ;;
            -*) continue ;;
        esac
        if [[ -z $cmd ]] || ((arity >= 0 && n >= arity)); then
            cmd=$w
            n=0
            _transactional_update_arity "$cmd"
        else
            n=$((n + 1))
        fi
    done

    if ((arity == -2)); then
        if ((n == 0)); then
            mapfile -t COMPREPLY < <(compgen -c -- "$cur")
        else
            compopt -o filenames 2>/dev/null
            mapfile -t COMPREPLY < <(compgen -f -- "$cur")
        fi
        return 0
    fi
    if [[ -n $opt ]]; then
        [[ $cur == = ]] && cur=""
        case $opt in
{chr(10).join(value_cases)}
        esac
    elif [[ $cur == --root=* ]]; then
        cur=${{cur#--root=}}
        hint=file
    elif [[ $cur == -* ]]; then
        opts={shlex.quote(_words(_opt_names(globals_)))}
        case $cmd in
{chr(10).join(own_cases)}
        esac
        mapfile -t COMPREPLY < <(compgen -W "$opts" -- "$cur")
        return 0
    else
        case $prev in
            {_pattern(optional_number)}) words="$commands"; hint=snapshot ;;
        esac
        if [[ -z $cmd ]]; then
            words="$commands"
        else
            case $cmd in
{chr(10).join(slot_cases)}
            esac
            if ((arity >= 0 && (n >= arity || optional))); then
                ((n >= arity)) && {{ words=""; hint=none; }}
                words+=" $commands"
            fi
        fi
    fi
    case $hint in
        snapshot) words+=" $(_transactional_update_snapshots "${{COMP_WORDS[0]}}" "$root")" ;;
        file)
            compopt -o filenames 2>/dev/null
            mapfile -t COMPREPLY < <(compgen -f -- "$cur") ;;
        dir)
            compopt -o filenames 2>/dev/null
            mapfile -t COMPREPLY < <(compgen -d -- "$cur") ;;
    esac
    local more
    mapfile -t more < <(compgen -W "$words" -- "$cur")
    COMPREPLY+=("${{more[@]}}")
    return 0
}}

complete -F _transactional_update transactional-update
"""


def _own(cmd: Command) -> str:
    """The names of *cmd*'s own options, as a quoted word that starts with a space."""
    return shlex.quote(" " + _words(_opt_names(cmd.options)))


def _opt_names(opts: tuple[Opt, ...] | list[Opt]) -> list[str]:
    return [n for o in opts for n in o.names]


def _zq(text: str) -> str:
    """*text* single-quoted for zsh."""
    return "'" + text.replace("'", "'\\''") + "'"


def _described(items: list[tuple[str, str]]) -> str:
    """A zsh array of ``name:description`` for ``_describe`` (colons in names escaped)."""
    return " ".join(_zq(f"{n.replace(':', chr(92) + ':')}:{d}") for n, d in items)


def _zsh_slot(slot: Slot, i: int) -> str:
    cond = f"n >= {i}" if slot.many else f"n == {i}"
    return (
        f"            (( {cond} )) && {{ cands=({' '.join(_zq(w) for w in slot.words)}); "
        f"hint={slot.hint}; optional={int(not slot.required or slot.many)}; }}"
    )


def zsh() -> str:
    cmds = reference.commands()
    globals_ = reference.global_options()
    value_opts = _value_options(_all_options(cmds))
    optional_number = [n for o in _all_options(cmds) if o.optional_value for n in o.names]
    takes_value = [n for names_ in value_opts.values() for n in names_]

    def opt_items(opts: tuple[Opt, ...]) -> list[tuple[str, str]]:
        return [(n, o.help) for o in opts for n in o.names]

    cmd_items = [(n, c.short) for c in cmds for n in _names(c)]
    arity_cases = [
        f"        {_pattern(_names(c))}) arity={_arity(c)} ;;" for c in cmds if _arity(c) != 0
    ]
    own_cases = [
        f"            {_pattern(_names(c))}) opts+=({_described(opt_items(c.options))}) ;;"
        for c in cmds
        if c.options
    ]
    slot_cases = []
    for c in cmds:
        if c.slots:
            slot_cases += [f"            {_pattern(_names(c))})"]
            for i, slot in enumerate(c.slots):
                slot_cases.append(_zsh_slot(slot, i))
                if slot.many:
                    break
            slot_cases.append("            ;;")
    value_cases = [
        f"            {_pattern(opt_names)}) hint={hint} ;;"
        for hint, opt_names in value_opts.items()
    ]
    return f"""#compdef transactional-update
# zsh completion for transactional-update(8)
{HEADER}
# The snapshot numbers of the system, or of the one at --root DIR: from `list --json`, whose
# objects have their "number" key at an indent of four spaces.
_transactional-update_snapshots() {{
    "$1" ${{2:+--root "$2"}} list --json 2>/dev/null | sed -n '{NUMBERS_SED}'
}}

# How many arguments a command takes before the next command of the chain: -1 any number,
# -2 the rest of the line (run).
_transactional-update_arity() {{
    arity=0
    case $1 in
{chr(10).join(arity_cases)}
    esac
}}

_transactional-update() {{
    local -a commands opts cands
    local w root="" cmd="" opt="" hint=none cur=${{words[CURRENT]}} prev=${{words[CURRENT-1]}}
    local -i n=0 i arity=0 optional=0 start=0
    commands=({_described(cmd_items)})
    local -a line
    line=("${{words[@]}}")
    for ((i = 2; i < CURRENT; i++)); do
        w=${{line[i]}}
        if ((arity == -2)); then  # after run: the command's own words
            if [[ $n == 0 && $w == -- ]]; then start=i; else ((n++)); fi
            continue
        fi
        if [[ -n $opt ]]; then
            [[ $opt == --root ]] && root=$w
            opt=""
            continue
        fi
        case $w in
            --root=*) root=${{w#--root=}}; continue ;;
            {_pattern(optional_number)})
                if ((i + 1 < CURRENT)) && [[ ${{line[i+1]}} == <-> ]]; then ((i++)); fi
                continue ;;
            {_pattern(takes_value)}) opt=$w; continue ;;
            -*) continue ;;
        esac
        if [[ -z $cmd ]] || ((arity >= 0 && n >= arity)); then
            cmd=$w
            n=0
            _transactional-update_arity $cmd
            ((arity == -2)) && start=i
        else
            ((n++))
        fi
    done

    if ((arity == -2)); then  # complete the command after run as its own command line
        words=("${{(@)line[start+1,-1]}}")
        ((CURRENT -= start))
        _normal
        return
    fi
    if [[ -n $opt ]]; then
        case $opt in
{chr(10).join(value_cases)}
        esac
    elif [[ $cur == --root=* ]]; then
        compset -P '--root='
        hint=file
    elif [[ $cur == -* ]]; then
        opts=({_described(opt_items(globals_))})
        case $cmd in
{chr(10).join(own_cases)}
        esac
        _describe -t options option opts
        return
    else
        case $prev in
            {_pattern(optional_number)}) hint=snapshot; cmd="" ;;
        esac
        if [[ -n $cmd ]]; then
            case $cmd in
{chr(10).join(slot_cases)}
            esac
            if ((arity >= 0 && n >= arity)); then
                cands=(); hint=none; optional=1
            fi
        fi
        if [[ -z $cmd ]] || ((arity >= 0 && optional)); then
            _describe -t commands command commands
        fi
    fi
    case $hint in
        snapshot) cands+=($(_transactional-update_snapshots ${{line[1]}} "$root")) ;;
        file) _files ;;
        dir) _files -/ ;;
    esac
    (( ${{#cands}} )) && compadd -a cands
    return 0
}}

if [[ $funcstack[1] == _transactional-update ]]; then
    _transactional-update "$@"
fi
"""
