"""MCP prompts: step-by-step workflows over this platform's tools, for an agent to follow.

Each prompt names the registry tools it tells the agent to call (in backticks, and in ``tools``) and is
listed only to callers whose scopes allow every one of them. Arguments are validated like tool inputs:
unknown or malformed ones are refused with INVALID_PARAMS rather than ignored.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final, Generic, TypeVar

from mcp import types
from mcp.server import ServerRequestContext
from mcp.shared.exceptions import MCPError
from pydantic import Field, ValidationError

from aiserve_mcp.core.principal import Principal
from aiserve_mcp.tools.common import Input
from aiserve_mcp.tools.registry import ToolRegistry
from aiserve_mcp.tools.runner import validation_details


class CheapestGpuArgs(Input):
    workload: str = Field(
        min_length=1,
        max_length=2000,
        description="The model or workload to run, e.g. 'Llama 3 8B inference in FP16' or 'fine-tune a 7B "
        "model with LoRA'.",
    )
    min_vram_gb: int | None = Field(
        default=None, ge=1, le=1024, description="Minimum GPU memory per GPU, in GB (worked out if omitted)."
    )
    max_price: Decimal | None = Field(
        default=None, gt=0, le=10_000, description="Most USD per hour for the whole offer."
    )


def _cheapest_gpu(args: CheapestGpuArgs) -> str:
    vram = (
        f"at least {args.min_vram_gb} GB of VRAM per GPU"
        if args.min_vram_gb is not None
        else "VRAM per GPU: work it out first (step 1)"
    )
    price = f"at most ${args.max_price} per hour" if args.max_price is not None else "no price cap given"
    return f"""Find the cheapest GPU offer that can run this workload: {args.workload}
Constraints: {vram}; {price}.

1. Unless given, estimate the VRAM the workload needs: weights are parameters x bytes per parameter (2 for \
FP16/BF16, 1 for INT8, 0.5 for 4-bit), plus about 20% for activations and KV cache; full fine-tuning needs \
about 4x the FP16 weights, LoRA about 1.5x.
2. Call `get_gpu_preferences` for the user's saved vendors, tiers, minimum VRAM and price cap. The \
constraints above override the saved ones.
3. Call `list_available_gpus` with min_vram set to the VRAM needed: it lists the GPU models that qualify \
with VRAM, dense FP16 TFLOPS, memory bandwidth and the mean live price per GPU-hour.
4. Call `search_gpu_offers` with min_vram (GB per GPU) and, if capped, max_price (USD per hour for the \
whole offer); add gpu_model when one GPU model is clearly the best fit. Offers come back cheapest first \
from every provider. Read 'providers' and 'errors': a provider that failed or is not configured is missing \
from the results; say so.
5. Compare the cheapest offers that fit: price_per_hour (whole offer) and price_per_gpu_hour, num_gpus, \
vram_gb, reliability and location. Prefer one GPU with enough VRAM over several smaller ones unless the \
workload shards across GPUs; never pick an offer whose VRAM per GPU is below the need.
6. Call `test_gpu_preferences` to see how the user's preferences score the candidates (0-100, with \
alternatives), and mention it when it disagrees with the cheapest choice.

Answer with the recommended offer (its 'id', GPU model, price per hour and why it fits), the runner-up, and \
the cost for the expected hours. Do not rent anything: renting spends the user's credits and needs their \
go-ahead."""


class DeployArgs(Input):
    model: str = Field(
        min_length=1,
        max_length=2000,
        description="The id of one of your models, or a description of the model file to deploy (its path, "
        "format and what it computes).",
    )


def _deploy_and_test(args: DeployArgs) -> str:
    return f"""Deploy and test this model: {args.model}

1. Call `list_models`. If the model above is the id or name of one of the user's models, use its id and go \
to step 4.
2. Call `list_model_formats` to check that the file's format is recognised and servable on this server, \
and `get_quota` to check that it fits (bytes left, largest file accepted, uploads left this hour and day).
3. Call `upload_model` with the file given one way, plus a name (and gpu_required, replicas... when \
wanted):
   - 'url': where the file is online (a model hub, a bucket, a release asset); the server downloads it.
   - 'content_base64': the file's bytes, for a file of at most 2 MiB, with 'filename' (e.g. model.onnx).
   - 'path': a file on the user's machine, only when this server runs as 'aiserve mcp' on that machine.
   For a larger file that is only on the user's computer, call `create_model_upload` with its size_bytes \
and give the user the 'curl' command it returns; the model appears once they run it (then call \
`list_models` for its id).
   The answer carries 'model_id' and status 'loading', or 'stored' with the reason it cannot be served here.
4. Call `get_model` with model_id until status is 'ready' (it loads in the background). On 'failed' or \
'stored', report status_reason and stop. Note its 'signature': each input's name, dtype and shape (null: \
any size).
5. Call `predict` with model_id and inputs built from the signature: input name -> nested list of that \
shape and dtype (a one-input model also takes {{"features": [...]}}). Start with one small valid row; a \
VALIDATION_ERROR says what was expected.
6. Call `get_model_metrics` with model_id for requests, error rate and p50/p95/p99 latency in ms.

Answer with the model id and status, one input you sent and the output you got, and the measured latency."""


class SpendingArgs(Input):
    window: str | None = Field(
        default=None,
        pattern=r"^(hourly|daily|weekly|monthly|[1-9][0-9]{0,5}[smhdw])$",
        description="One spending window to focus on: hourly, daily, weekly, monthly, or a duration such as "
        "72h (all windows if omitted).",
    )


def _review_spending(args: SpendingArgs) -> str:
    focus = f"with a focus on the '{args.window}' window" if args.window else "across every window"
    return f"""Review this account's spending {focus}.

1. Call `get_spending`: spent against limit (USD) in each rolling window, the window closest to its limit \
(window_name, percentage_used) and any violations.
2. Call `get_spending_limits` for the limits themselves (with api_key_id, the budget of one agent's key).
3. Call `list_gpu_contracts` for the instances that keep costing money: price_per_hour, billing (metered: \
per second while it exists; prepaid: paid up front), expires_at and auto_renew.
4. Call `list_transactions` for recent payments, holds, charges and releases, newest first.
5. Call `check_spending` with estimated_cost set to the next planned spend (an instance's price_per_hour \
times its hours) to see whether a limit would refuse it (SPENDING_LIMIT names the windows).

Look for: a window above 80% of its limit; violations; instances running longer than needed or with \
auto_renew on; charges that match no instance; windows with no limit at all.
Report the numbers, the risks, and the changes you recommend (limits to set, instances to destroy). Change \
nothing without the user's go-ahead."""


ArgsT = TypeVar("ArgsT", bound=Input)


@dataclass(frozen=True)
class PromptSpec(Generic[ArgsT]):
    """A prompt: its arguments model (listed as the prompt's arguments), the text it renders from them,
    and every tool that text names."""

    name: str
    title: str
    description: str
    arguments: type[ArgsT]
    render: Callable[[ArgsT], str]
    tools: tuple[str, ...]

    def listing(self) -> types.Prompt:
        return types.Prompt(
            name=self.name,
            title=self.title,
            description=self.description,
            arguments=[
                types.PromptArgument(name=name, description=f.description, required=f.is_required())
                for name, f in self.arguments.model_fields.items()
            ],
        )

    def messages(self, arguments: dict[str, str]) -> list[types.PromptMessage]:
        try:
            args = self.arguments.model_validate(arguments)
        except ValidationError as exc:
            details = validation_details(exc)
            first = details["fields"][0]
            raise MCPError(
                types.INVALID_PARAMS,
                f"invalid arguments for prompt '{self.name}': {first['field']}: {first['message']}",
                details,
            ) from None
        text = self.render(args)
        return [types.PromptMessage(role="user", content=types.TextContent(type="text", text=text))]


PROMPTS: Final[tuple[PromptSpec[Any], ...]] = (
    PromptSpec(
        "find_cheapest_gpu",
        "Find the cheapest GPU for a workload",
        "Guides the agent to size a workload's VRAM, read the user's GPU preferences, search live offers "
        "across every provider and compare them, ending with a recommended offer id and its cost. Rents "
        "nothing.",
        CheapestGpuArgs,
        _cheapest_gpu,
        ("get_gpu_preferences", "list_available_gpus", "search_gpu_offers", "test_gpu_preferences"),
    ),
    PromptSpec(
        "deploy_and_test_model",
        "Deploy and test a model",
        "Guides the agent through serving one model: checking its format and the storage quota, uploading "
        "it (from a URL, inline, a local path over stdio, or a one-time link), waiting until it is ready, "
        "one prediction from its signature, and its measured latency.",
        DeployArgs,
        _deploy_and_test,
        (
            "list_models",
            "list_model_formats",
            "get_quota",
            "upload_model",
            "create_model_upload",
            "get_model",
            "predict",
            "get_model_metrics",
        ),
    ),
    PromptSpec(
        "review_spending",
        "Review spending against limits",
        "Guides the agent through the spending windows and limits, active instances, transactions and a "
        "pre-check of the next spend, and what to look for; it recommends changes and makes none.",
        SpendingArgs,
        _review_spending,
        ("get_spending", "get_spending_limits", "list_gpu_contracts", "list_transactions", "check_spending"),
    ),
)


class McpPrompts:
    """The prompt handlers of the MCP server; a prompt is listed when the caller may call all its tools."""

    def __init__(
        self, registry: ToolRegistry, principal_of: Callable[[ServerRequestContext[object]], Principal | None]
    ) -> None:
        self._registry = registry
        self._principal_of = principal_of

    def _visible(self, ctx: ServerRequestContext[object]) -> list[PromptSpec[Any]]:
        principal = self._principal_of(ctx)
        return [p for p in PROMPTS if all(self._registry.get(t).visible_to(principal) for t in p.tools)]

    async def list_prompts(
        self, ctx: ServerRequestContext[object], params: types.PaginatedRequestParams | None
    ) -> types.ListPromptsResult:
        return types.ListPromptsResult(prompts=[p.listing() for p in self._visible(ctx)])

    async def get_prompt(
        self, ctx: ServerRequestContext[object], params: types.GetPromptRequestParams
    ) -> types.GetPromptResult:
        spec = next((p for p in self._visible(ctx) if p.name == params.name), None)
        if spec is None:
            raise MCPError(types.INVALID_PARAMS, f"unknown prompt '{params.name}'", {"name": params.name})
        return types.GetPromptResult(
            description=spec.description, messages=spec.messages(params.arguments or {})
        )
