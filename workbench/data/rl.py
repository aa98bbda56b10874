"""Reinforcement-learning environments from Gymnasium (CartPole ships with it: no download).

An agent learns from its own experience, so this data module holds no data: it names the
environment and sets the pace of training. An epoch is ``steps_per_epoch`` environment steps (one
gradient step each); validation is ``eval_episodes`` greedy episodes.
"""

from __future__ import annotations

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from workbench.registry import register_data


class _Ticks(Dataset):
    """``n`` dummy items: the loader only tells the Trainer how many steps an epoch has."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.tensor(index)


class GymDataModule(pl.LightningDataModule):
    """A Gymnasium environment, with its observation and action sizes for the agent."""

    def __init__(
        self,
        env: str = "CartPole-v1",
        steps_per_epoch: int = 1000,
        eval_episodes: int = 10,
        test_episodes: int = 100,
        seed: int = 42,
    ) -> None:
        import gymnasium as gym

        super().__init__()
        try:
            probe = gym.make(env)
        except gym.error.Error as exc:
            raise ValueError(f"data.options.env: cannot make {env!r}: {exc}") from exc
        if not isinstance(probe.action_space, gym.spaces.Discrete):
            raise ValueError(f"data.options.env: {env!r} needs discrete actions for Q-learning")
        self.env, self.seed = env, seed
        self.batch_size = None  # replay minibatches are the agent's business (model.batch_size)
        self.obs_shape = tuple(probe.observation_space.shape)
        self.n_actions = int(probe.action_space.n)
        probe.close()
        self.steps_per_epoch = steps_per_epoch
        self.eval_episodes, self.test_episodes = eval_episodes, test_episodes
        self.fingerprint_ = f"{env}-seed{seed}"

    def setup(self, stage: str | None = None) -> None:
        pass

    def model_kwargs(self) -> dict:
        return {"input_shape": self.obs_shape, "num_classes": self.n_actions, "env": self.env}

    def train_dataloader(self) -> DataLoader:
        return DataLoader(_Ticks(self.steps_per_epoch), batch_size=None)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(_Ticks(self.eval_episodes), batch_size=None)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(_Ticks(self.test_episodes), batch_size=None)

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """A few observations from random play: input examples for logging and export."""
        import gymnasium as gym

        environment = gym.make(self.env)
        observation, _ = environment.reset(seed=self.seed)
        rows = [observation]
        for _ in range(15):
            observation, _, done, truncated, _ = environment.step(environment.action_space.sample())
            rows.append(observation)
            if done or truncated:
                observation, _ = environment.reset()
        environment.close()
        states = torch.as_tensor(np.asarray(rows), dtype=torch.float32)
        return states, torch.zeros(len(states), dtype=torch.long)


@register_data("gym", explainable=False)
def gym_env(
    max_samples=None, augment=False, batch_size=None, on_device=True, **options
) -> GymDataModule:
    """A Gymnasium environment; ``data.options``: env, steps_per_epoch, eval_episodes, ..."""
    if augment:
        raise ValueError("data.augment: an environment has no augmentation")
    if max_samples is not None:  # tiny runs: a few steps and episodes
        options.setdefault("steps_per_epoch", max_samples)
        options.setdefault("eval_episodes", 1)
        options.setdefault("test_episodes", 2)
    options.pop("val_fraction", None), options.pop("test_fraction", None)
    options.pop("normalize", None)
    return GymDataModule(**options)
