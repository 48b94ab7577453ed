"""A stand-in for the one thing FlexGen 0.1.8's benchmark takes from Hugging Face ``transformers``.

``flexgen.flex_opt.run_flexgen`` only calls ``AutoTokenizer.from_pretrained("facebook/opt-30b",
padding_side="left")`` and then ``tokenizer(prompts, padding="max_length", max_length=L).input_ids`` to build
its fixed test prompt ("Paris is the capital city of", repeated for every sequence); ``batch_decode`` is
only called with real (non-dummy) weights. The GPU host has no network, so this module stands in for the
package: it returns fixed OPT token ids for that prompt, left-padded with OPT's pad id 1 to ``max_length``
as the real tokenizer would. The timing does not depend on the ids (dense compute, dummy weights). It is on
PYTHONPATH only for the FlexGen runs of peers/flexgen/run_host.sh.
"""

from __future__ import annotations

PAD_ID = 1
# OPT's BOS (2) and GPT-2 BPE ids standing in for "Paris is the capital city of".
PROMPT_IDS = [2, 32826, 16, 5, 812, 343, 9]


class _Encoding:
    def __init__(self, input_ids):
        self.input_ids = input_ids


class _Tokenizer:
    pad_token_id = PAD_ID

    def __init__(self, padding_side: str = "left"):
        self.padding_side = padding_side

    def __call__(self, prompts, padding=None, max_length=None, **_):
        rows = []
        for _prompt in prompts:
            ids = list(PROMPT_IDS)
            if max_length is not None:
                ids = ids[-max_length:]
                pad = [PAD_ID] * (max_length - len(ids))
                ids = pad + ids if self.padding_side == "left" else ids + pad
            rows.append(ids)
        return _Encoding(rows)

    def batch_decode(self, ids, skip_special_tokens=True):
        return [" ".join(str(int(t)) for t in row) for row in ids]


class AutoTokenizer:
    @staticmethod
    def from_pretrained(name, padding_side="left", **_):
        return _Tokenizer(padding_side)
