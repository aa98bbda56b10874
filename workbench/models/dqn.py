"""Deep Q-learning (Mnih et al., 2015) as a LightningModule, with the double-DQN target of
van Hasselt et al. (2016).

Each training step takes one ε-greedy step in the environment, stores the transition in a
replay buffer and, once the buffer holds ``warmup`` transitions, fits the Q-network to
r + γ · Q_target(s', argmax_a Q(s', a)) on a random minibatch (Huber loss). The target network
follows the online one by Polyak averaging (``tau``). ε decays linearly from ``eps_start`` to
``eps_end`` over ``eps_decay_steps``; the learning rate decays to zero over the run. Validation
and test play greedy episodes and log the mean return; an episode cut off by the time limit is
not a terminal state, so it is bootstrapped.
"""

from __future__ import annotations

import copy
import warnings

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F

from workbench.models.mlp import mlp
from workbench.models.supervised import running_mean
from workbench.registry import register_model

# Before the buffer is warm a step returns None on purpose: no gradient step yet.
warnings.filterwarnings("ignore", message=r".*`training_step` returned `None`")


class ReplayBuffer:
    """A fixed-size ring of transitions held as tensors on one device."""

    def __init__(self, capacity: int, obs_shape: tuple[int, ...], device) -> None:
        self.capacity, self.size, self.cursor = capacity, 0, 0
        self.states = torch.zeros(capacity, *obs_shape, device=device)
        self.next_states = torch.zeros(capacity, *obs_shape, device=device)
        self.actions = torch.zeros(capacity, dtype=torch.long, device=device)
        self.rewards = torch.zeros(capacity, device=device)
        self.terminal = torch.zeros(capacity, device=device)

    def add(self, state, action: int, reward: float, next_state, terminal: bool) -> None:
        i = self.cursor
        self.states[i] = torch.as_tensor(state)
        self.next_states[i] = torch.as_tensor(next_state)
        self.actions[i], self.rewards[i], self.terminal[i] = action, reward, float(terminal)
        self.cursor = (i + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def sample(self, n: int):
        index = torch.randint(0, self.size, (n,), device=self.states.device)
        return (
            self.states[index],
            self.actions[index],
            self.rewards[index],
            self.next_states[index],
            self.terminal[index],
        )


@register_model("dqn")
class DQNModule(pl.LightningModule):
    """A Q-learning agent for a Gymnasium environment with discrete actions (``data.name: gym``)."""

    def __init__(
        self,
        env: str = "CartPole-v1",
        input_shape: tuple[int, ...] = (4,),
        num_classes: int = 2,
        hidden: int = 128,
        depth: int = 2,
        lr: float = 5e-4,
        gamma: float = 0.99,
        batch_size: int = 64,
        buffer_size: int = 50_000,
        warmup: int = 1_000,
        eps_start: float = 1.0,
        eps_end: float = 0.02,
        eps_decay_steps: int = 10_000,
        tau: float = 0.005,
        max_grad_norm: float = 10.0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = mlp([int(np.prod(input_shape)), *[hidden] * depth, num_classes], dropout=0.0)
        self.target = copy.deepcopy(self.net).requires_grad_(False)
        # Environment seeds come from the global seed (pl.seed_everything); kept in checkpoints.
        self.register_buffer("seed_", torch.randint(0, 2**31 - 1, ()))
        self.rng = np.random.default_rng(self.env_seed)
        self.metrics = torch.nn.ModuleDict(
            {
                "loss": running_mean(),
                "episode_return": running_mean(),
                "val_return": running_mean(),
                "test_return": running_mean(),
            }
        )
        self.buffer: ReplayBuffer | None = None
        self.env_steps = 0

    @property
    def env_seed(self) -> int:
        return int(self.seed_)

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        """Q-values (N, actions)."""
        return self.net(states)

    def example_input(self, data=None, n: int = 2) -> torch.Tensor:
        if data is not None:
            return data.split("test")[0][:n]
        seeded = torch.Generator().manual_seed(0)
        return torch.randn(n, *self.hparams.input_shape, generator=seeded)

    def epsilon(self) -> float:
        fraction = min(1.0, self.env_steps / max(1, self.hparams.eps_decay_steps))
        return self.hparams.eps_start + fraction * (self.hparams.eps_end - self.hparams.eps_start)

    @torch.no_grad()
    def act(self, state: np.ndarray, epsilon: float = 0.0) -> int:
        """ε-greedy action for one observation (greedy when ``epsilon`` is 0)."""
        if epsilon > 0 and self.rng.random() < epsilon:
            return int(self.rng.integers(self.hparams.num_classes))
        q = self.net(torch.as_tensor(state, dtype=torch.float32, device=self.device)[None])
        return int(q.argmax(1))

    # --- training -----------------------------------------------------------------------------
    def on_fit_start(self) -> None:
        import gymnasium as gym

        self.rng = np.random.default_rng(self.env_seed)
        self.train_env = gym.make(self.hparams.env)
        self.state, _ = self.train_env.reset(seed=self.env_seed)
        self.episode_return = 0.0
        self.buffer = ReplayBuffer(
            self.hparams.buffer_size, tuple(self.hparams.input_shape), self.device
        )

    def _env_step(self) -> None:
        action = self.act(self.state, self.epsilon())
        next_state, reward, terminated, truncated, _ = self.train_env.step(action)
        self.buffer.add(self.state, action, reward, next_state, terminated)
        self.env_steps += 1
        self.episode_return += float(reward)
        self.state = next_state
        if terminated or truncated:
            self.metrics["episode_return"].update(self.episode_return)
            self.episode_return = 0.0
            self.state, _ = self.train_env.reset()

    def td_loss(self, states, actions, rewards, next_states, terminal) -> torch.Tensor:
        """Huber loss between Q(s, a) and the double-DQN target."""
        q = self.net(states).gather(1, actions[:, None]).squeeze(1)
        with torch.no_grad():
            best_next = self.net(next_states).argmax(1, keepdim=True)
            next_q = self.target(next_states).gather(1, best_next).squeeze(1)
            target = rewards + self.hparams.gamma * (1.0 - terminal) * next_q
        return F.smooth_l1_loss(q, target)

    def training_step(self, batch, batch_idx):
        self._env_step()
        if self.buffer.size < max(self.hparams.warmup, self.hparams.batch_size):
            return None  # Lightning skips the optimiser step
        loss = self.td_loss(*self.buffer.sample(self.hparams.batch_size))
        self.metrics["loss"].update(loss.detach())
        return loss

    def configure_gradient_clipping(
        self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None
    ):
        self.clip_gradients(optimizer, self.hparams.max_grad_norm, "norm")

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        with torch.no_grad():
            for target, online in zip(self.target.parameters(), self.net.parameters(), strict=True):
                target.lerp_(online, self.hparams.tau)

    def on_train_epoch_end(self) -> None:
        logged = {"train/epsilon": self.epsilon(), "train/env_steps": float(self.env_steps)}
        for name in ("loss", "episode_return"):
            if self.metrics[name].update_count:  # nothing to report before the first update
                logged[f"train/{name}"] = self.metrics[name].compute()
            self.metrics[name].reset()
        self.log_dict(logged)

    def configure_optimizers(self):
        # Only the online network learns; a learning rate decaying to zero over the run settles
        # the policy instead of letting late updates undo it (a known failure of DQN on CartPole).
        optimizer = torch.optim.Adam(self.net.parameters(), lr=self.hparams.lr)
        epochs = max(1, int(self.trainer.max_epochs or 1)) if self._trainer is not None else 1
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
        return {"optimizer": optimizer, "lr_scheduler": scheduler}

    # --- evaluation ---------------------------------------------------------------------------
    def play(self, seed: int) -> float:
        """The return of one greedy episode from the reset given by ``seed``."""
        import gymnasium as gym

        env = gym.make(self.hparams.env)
        state, _ = env.reset(seed=seed)
        total, done = 0.0, False
        while not done:
            state, reward, terminated, truncated, _ = env.step(self.act(state))
            total += float(reward)
            done = terminated or truncated
        env.close()
        return total

    def validation_step(self, batch, batch_idx):
        # The same evaluation episodes every epoch, so epochs compare like with like.
        self.metrics["val_return"].update(self.play(self.env_seed + 1_000 + int(batch)))

    def test_step(self, batch, batch_idx):
        # Test episodes start from resets that validation never saw.
        self.metrics["test_return"].update(self.play(self.env_seed + 100_000 + int(batch)))

    def on_validation_epoch_end(self) -> None:
        self.log("val/return", self.metrics["val_return"].compute())
        self.metrics["val_return"].reset()

    def on_test_epoch_end(self) -> None:
        self.log("test/return", self.metrics["test_return"].compute())
        self.metrics["test_return"].reset()
