"""Templates -> Python source: find the template folder, read a template with everything it imports (for the
key's hash), and render it with the specialization constants."""
from __future__ import annotations

import os
import re
from pathlib import Path

import jinja2
import jinja2.meta

from eetjit.codegen.key import SpecKey

TEMPLATES_ENV = "EETJIT_TEMPLATES_DIR"  # a folder holding cpu/ and cuda/; overrides the shipped templates


def templates_root(templates_dir=None) -> Path:
    """The templates folder: the argument, else $EETJIT_TEMPLATES_DIR, else the shipped `templates/`."""
    if templates_dir is not None:
        return Path(templates_dir)
    if os.environ.get(TEMPLATES_ENV):
        return Path(os.environ[TEMPLATES_ENV])
    from eetjit.resources import templates_dir as shipped
    return shipped()


_envs: dict[Path, jinja2.Environment] = {}


def _environment(folder: Path) -> jinja2.Environment:
    env = _envs.get(folder)
    if env is None:
        env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(folder)), undefined=jinja2.StrictUndefined,
                                 trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True,
                                 autoescape=False, auto_reload=True)
        _envs[folder] = env
    return env


def template_name(op: str) -> str:
    return f"{op}.py.j2"


# (folder, op) -> ({file: (mtime_ns, size)}, source): a session asks for every kernel's key; a stat of each file
# instead of reading and scanning them all again. A file whose stat changed is read again.
_sources: dict[tuple[Path, str], tuple[dict, str]] = {}


def _stamp(path: Path):
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


def template_source(op: str, target: str = "cpu", templates_dir=None) -> str:
    """The text of template `op` and of every template it imports or includes, recursively (so editing the
    shared macros changes the key of every kernel that uses them)."""
    folder = templates_root(templates_dir) / target
    memo = _sources.get((folder, op))
    if memo is not None and all(_stamp(folder / name) == stamp for name, stamp in memo[0].items()):
        return memo[1]
    stamps = {}
    source = _read_source(op, folder, stamps)
    _sources[(folder, op)] = (stamps, source)
    return source


def _read_source(op: str, folder: Path, stamps: dict) -> str:
    env = _environment(folder)
    seen: dict[str, str] = {}
    todo = [template_name(op)]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        stamps[name] = _stamp(folder / name)       # before reading: an edit in between is seen next time
        try:
            text, _, _ = env.loader.get_source(env, name)
        except jinja2.TemplateNotFound:
            raise FileNotFoundError(f"no {folder.name} template {name!r} in {folder}") from None
        seen[name] = text
        todo += _referenced(env, text)
    return "".join(f"=== {name}\n{seen[name]}" for name in sorted(seen))


# The text cut into comments, `{% %}` tags and `{{ }}` expressions, each closed by its own closer and with the quoted
# strings inside taken whole (a `{#` or `%}` in a string is no delimiter, a `}}` in a tag does not end it); a tag
# that names another template; a name written as a plain string literal. Jinja's own parse finds the same names
# (the tests compare them for every shipped template and for each tag form) but costs ~20 ms a template: ~0.4 s of
# a warm start's first generate on the GPU machine, over GPT-2's kernels (benchmarks/gpu/NOTES.md, session 16).
_BODY = r"""(?:"[^"]*"|'[^']*'|[^"'])*?"""
_PIECE = re.compile(r"\{#.*?#\}|\{%" + _BODY + r"%\}|\{\{" + _BODY + r"\}\}", re.S)
_TAG = re.compile(r"\{%[-+]?\s*(?:import|from|include|extends)\b(.*?)[-+]?%\}\Z", re.S)
_LITERAL = re.compile(r"""\s*(?:"([^"\\]+)"|'([^'\\]+)')\s*(?:$|(?:as|import|with|without|ignore)\s)""")


def _referenced(env: jinja2.Environment, text: str) -> list[str]:
    """The templates `text` imports, includes or extends. A name that is not a string literal (a variable, a
    list, a conditional), a backslash in a tag or expression (an escape in a string) or a `raw` block sends the
    text through Jinja's parser instead, as does an environment with other delimiters or line statements."""
    delimiters = (env.block_start_string, env.block_end_string, env.variable_start_string, env.variable_end_string,
                  env.comment_start_string, env.comment_end_string)
    if delimiters != ("{%", "%}", "{{", "}}", "{#", "#}") or env.line_statement_prefix or env.line_comment_prefix \
            or re.search(r"\{%[-+]?\s*raw\b", text):
        return parsed_references(env, text)
    names = []
    for piece in _PIECE.finditer(text):
        if piece.group(0).startswith("{#"):
            continue
        if "\\" in piece.group(0):       # an escaped quote would end a string where the lexer does not
            return parsed_references(env, text)
        tag = _TAG.match(piece.group(0))
        if tag is None:
            continue
        literal = _LITERAL.match(tag.group(1) + " ")
        if literal is None:
            return parsed_references(env, text)
        names.append(literal.group(1) or literal.group(2))
    return names


def parsed_references(env: jinja2.Environment, text: str) -> list[str]:
    """The templates Jinja's parse of `text` finds it importing, including or extending (names it cannot know
    before rendering left out)."""
    return [n for n in jinja2.meta.find_referenced_templates(env.parse(text)) if n is not None]


def render(key: SpecKey, templates_dir=None) -> str:
    """Render the kernel module of `key`: its consts become template variables (baked in as literals)."""
    folder = templates_root(templates_dir) / key.target
    template = _environment(folder).get_template(template_name(key.op))
    variables = dict(key.consts)
    return template.render(variables, op=key.op, key=key, dtype=key.dtype, seq_bucket=key.seq_bucket,
                           consts=key.consts)
