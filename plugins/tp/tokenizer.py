"""The serving tokenizer: HF ``tokenizers`` for text <-> ids, jinja2 for the chat template.

No transformers here: it costs ~1.8 s of imports on the startup path. The chat template
is rendered with the same sandbox, globals and filters that transformers'
``apply_chat_template`` provides, so prompts are byte-identical to the reference.

    >>> tok = Tokenizer.from_dir(folder)                          # doctest: +SKIP
    >>> prompt = tok.apply_chat_template([{"role": "user", "content": "Hi"}])
    >>> ids = tok.encode(prompt, add_special_tokens=False)  # the template wrote the specials
    >>> tok.decode(ids)
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

from rt.core.errors import ModelError, RequestError

# The named special tokens transformers passes to every chat template (its special_tokens_map).
_SPECIAL_TOKEN_NAMES = (
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
)
# Names a message's reasoning comes under; templates read the first (gpt-oss reads "thinking").
_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")


class Tokenizer:
    """Encode, decode and render chats for one model folder."""

    def __init__(
        self,
        backend: Any,
        *,
        folder: Path,
        chat_template: str | None = None,
        special_tokens: dict[str, str] | None = None,
        eos_token_ids: tuple[int, ...] = (),
    ) -> None:
        self._backend = backend  # tokenizers.Tokenizer
        self.folder = folder
        self.chat_template = chat_template
        self.special_tokens = dict(special_tokens or {})
        self.eos_token_ids = eos_token_ids
        bos = self.special_tokens.get("bos_token")
        self.bos_token_id: int | None = backend.token_to_id(bos) if bos else None
        # A byte-fallback token (<0xE2>) decodes differently depending on the byte tokens
        # that follow it, so streaming must not emit text that ends in one.
        byte_ids = (
            (backend.token_to_id(f"<0x{b:02X}>") for b in range(256))
            if getattr(backend.model, "byte_fallback", False)
            else ()
        )
        self.byte_fallback_ids = frozenset(i for i in byte_ids if i is not None)
        self.special_token_ids = frozenset(
            i for i, t in backend.get_added_tokens_decoder().items() if t.special
        )
        self._compiled: Any = None

    @classmethod
    def from_dir(cls, path: str | Path) -> Tokenizer:
        """Load ``tokenizer.json`` plus the chat template and special tokens around it."""
        from tokenizers import Tokenizer as Backend

        folder = Path(path)
        file = folder / "tokenizer.json"
        if not file.is_file():
            raise ModelError(
                f"model folder {folder} has no tokenizer.json; rt needs a fast (tokenizers) "
                "tokenizer: save one with transformers' tokenizer.save_pretrained(folder)"
            )
        backend = Backend.from_file(str(file))
        config = _read_json(folder / "tokenizer_config.json")
        generation = _read_json(folder / "generation_config.json")
        special = {
            name: text
            for name in _SPECIAL_TOKEN_NAMES
            if (text := _token_text(config.get(name))) is not None
        }
        # tokenizer.json's post-processor decides BOS/EOS when it has one (as in transformers
        # v5, which then ignores add_bos_token); the config flags fill in when it has none.
        if backend.post_processor is None and (
            config.get("add_bos_token") or config.get("add_eos_token")
        ):
            _set_bos_eos(backend, config, special)
        eos_ids = [*_as_list(generation.get("eos_token_id"))]
        if (eos := special.get("eos_token")) is not None and (
            eos_id := backend.token_to_id(eos)
        ) is not None:
            eos_ids.append(eos_id)
        return cls(
            backend,
            folder=folder,
            chat_template=_chat_template(folder, config),
            special_tokens=special,
            eos_token_ids=tuple(dict.fromkeys(int(i) for i in eos_ids)),
        )

    @property
    def vocab_size(self) -> int:
        return self._backend.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        # tokenizers' encode() holds the GIL throughout: a 1 MiB prompt froze the HTTP
        # thread (health checks included) for 0.4-1.5 s. encode_batch_fast() releases it
        # while it works, skips the character offsets rt never reads (2x faster), and
        # gives the same ids.
        [encoding] = self._backend.encode_batch_fast([text], add_special_tokens=add_special_tokens)
        return encoding.ids

    def decode(self, ids: list[int] | tuple[int, ...], skip_special_tokens: bool = True) -> str:
        return self._backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        return self._backend.token_to_id(token)

    def compile_chat_template(self) -> None:
        """Compile the chat template once (startup does it, off the request path)."""
        import jinja2

        if self._compiled is None and self.chat_template is not None:
            try:
                self._compiled = _compile(self.chat_template)
            except jinja2.TemplateSyntaxError as e:
                raise ModelError(f"the chat template of {self.folder} does not parse: {e}") from e

    def apply_chat_template(
        self,
        messages: list[dict[str, Any]],
        add_generation_prompt: bool = True,
        tools: list[dict[str, Any]] | None = None,
        **kwargs: Any,
    ) -> str:
        """Render ``messages`` into the prompt text, as transformers does with ``tokenize=False``.

        Encode the result with ``add_special_tokens=False``: the template writes them.
        A template that rejects the messages (``raise_exception``), or a model without a
        chat template, raises ``RequestError``; a template that does not parse, ``ModelError``.
        """
        import jinja2

        if self.chat_template is None:  # a base model: chat requests cannot be served
            raise RequestError(
                f"model folder {self.folder} has no chat template (tokenizer_config.json "
                "'chat_template', chat_template.jinja or chat_template.json); use the "
                "completions API or add a chat_template.jinja to the folder"
            )
        self.compile_chat_template()
        try:
            return self._compiled.render(
                messages=_alias_reasoning(messages),
                tools=tools,
                documents=None,
                add_generation_prompt=add_generation_prompt,
                **{**self.special_tokens, **kwargs},
            )
        except jinja2.TemplateError as e:
            raise RequestError(f"the chat template rejected the messages: {e}") from e


def _set_bos_eos(backend: Any, config: dict[str, Any], special: dict[str, str]) -> None:
    """Install ``[BOS] $A [EOS]`` as tokenizer_config's add_bos_token/add_eos_token ask."""
    from tokenizers import processors

    def wanted(flag: str, name: str) -> tuple[str, int] | None:
        token = special.get(name)
        token_id = backend.token_to_id(token) if token is not None else None
        return (token, token_id) if config.get(flag) and token_id is not None else None

    bos, eos = wanted("add_bos_token", "bos_token"), wanted("add_eos_token", "eos_token")

    def template(seq: str, type_id: int) -> list[str]:
        return [
            *([f"{bos[0]}:{type_id}"] if bos else []),
            f"${seq}:{type_id}",
            *([f"{eos[0]}:{type_id}"] if eos else []),
        ]

    backend.post_processor = processors.TemplateProcessing(
        single=template("A", 0),
        pair=template("A", 0) + template("B", 1),
        special_tokens=[t for t in (bos, eos) if t is not None],
    )


def _compile(template: str) -> Any:
    """A template compiled in the environment transformers' ``_compile_jinja_template`` builds."""
    import jinja2
    import jinja2.ext
    import jinja2.nodes
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Generation(jinja2.ext.Extension):
        # `{% generation %}` marks assistant text for training masks; rendering keeps the body.
        tags = {"generation"}

        def parse(self, parser: Any) -> Any:
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(
                lineno
            )

        def _body(self, caller: Any) -> str:
            return caller()

    class Namespace(jinja2.utils.Namespace):
        # As in transformers: no underscore attributes, so templates cannot reach internals.
        def __init__(*args: Any, **kwargs: Any) -> None:
            self, args = args[0], args[1:]
            for name in dict(*args, **kwargs):
                Namespace._check(name)
            jinja2.utils.Namespace.__init__(self, dict(*args, **kwargs))

        def __setitem__(self, name: str, value: Any) -> None:
            Namespace._check(name)
            jinja2.utils.Namespace.__setitem__(self, name, value)

        @staticmethod
        def _check(name: Any) -> None:
            if isinstance(name, str) and name.startswith("_"):
                raise jinja2.exceptions.SecurityError(
                    f"namespace attribute {name!r} starts with '_'"
                )

    class TemplateDict:
        # `dict(...)` for templates without exposing the dict type itself.
        def __call__(self, *args: Any, **kwargs: Any) -> dict:
            return dict(*args, **kwargs)

        def fromkeys(self, *args: Any, **kwargs: Any) -> dict:
            return dict.fromkeys(*args, **kwargs)

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(
        x: Any,
        ensure_ascii: bool = False,
        indent: Any = None,
        separators: Any = None,
        sort_keys: bool = False,
    ) -> str:
        # Jinja's own tojson escapes HTML characters; transformers' does not.
        return json.dumps(
            x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
        )

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[Generation, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    env.globals["dict"] = TemplateDict()
    env.globals["namespace"] = Namespace
    return env.from_string(template)


def _alias_reasoning(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Copy a message's reasoning under every name templates read, as transformers does."""
    out = []
    for message in messages:
        if isinstance(message, dict):
            reasoning = next(
                (message[k] for k in _REASONING_FIELDS if message.get(k) is not None), None
            )
            if reasoning is not None:
                message = {"thinking": reasoning, **message, "reasoning_content": reasoning}
        out.append(message)
    return out


def _chat_template(folder: Path, config: dict[str, Any]) -> str | None:
    """chat_template.jinja, else chat_template.json, else tokenizer_config.json (transformers' order)."""
    jinja_file = folder / "chat_template.jinja"
    if jinja_file.is_file():
        return jinja_file.read_text(encoding="utf-8")
    template = _read_json(folder / "chat_template.json").get("chat_template")
    if template is None:
        template = config.get("chat_template")
    if isinstance(template, list):  # named templates: [{"name": "default", "template": ...}, ...]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    return template if isinstance(template, str) else None


def _token_text(value: Any) -> str | None:
    # Older tokenizer_config.json files serialise AddedToken as {"content": ..., ...}.
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _as_list(value: Any) -> list[int]:
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise ModelError(
            f"{path} is not valid JSON ({e}); re-download or fix the model folder"
        ) from e
    return data if isinstance(data, dict) else {}
